"""The HTML report of a `dsd-fast segment` run: OUTDIR/index.html.

One self-contained file: every thumbnail is embedded as a base64 data URI and the CSS and
JavaScript are inline, so it opens from a disk, an e-mail attachment or an offline machine
and makes no network request. Links to the full-size outputs are relative, so the output
folder can be moved as a whole.

The grid shows one card per finished image (a thumbnail of its overlay: lesion contour in
green, the uncertain band shaded yellow) and can be sorted by mean uncertainty, Dice (when
ground truth was given), lesion area or name; `#sort=dice-asc` in the address picks the
initial order.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from urllib.parse import quote

import numpy as np

THUMB_MAX = 200            # longest thumbnail side in pixels; smaller images keep their size
THUMB_QUALITY = 85         # JPEG quality of the embedded thumbnails


def thumbnail_size(height: int, width: int, longest: int = THUMB_MAX) -> tuple[int, int]:
    """(h, w) of the thumbnail: fits in longest x longest, keeps the aspect ratio, never
    enlarges, at least 1 x 1."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def data_uri(rgb: np.ndarray) -> str:
    """(h, w, 3) uint8 -> 'data:image/jpeg;base64,...'."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x) -> str:
    """A data-* attribute value: empty when missing or not finite (sorted last)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return repr(float(x))


def _fmt(x, spec: str, missing: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def _reason(name: str, why: str) -> str:
    """The failure reason without its leading "<name>: " (the table shows the name)."""
    return why[len(name) + 2:] if why.startswith(name + ": ") else why


def _href(rel: str) -> str:
    # The file name's own bytes, percent-encoded: names that are not valid UTF-8 (held as
    # lone surrogates) still link to the file on disk.
    return quote(os.fsencode(rel), safe="/")


_CSS = """
:root { --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #5c6577; --accent: #0b6bcb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: var(--bg); color: var(--ink); }
header { position: sticky; top: 0; z-index: 1; background: var(--bg);
         padding: 14px 20px 10px; border-bottom: 1px solid #d9dde5; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 8px; }
.meta { color: var(--muted); margin: 0 0 8px; }
.controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.controls button { font: inherit; padding: 4px 10px; border: 1px solid #b8c0cf;
                   background: #fff; border-radius: 14px; cursor: pointer; }
.controls button[aria-pressed="true"] { background: var(--accent); border-color: var(--accent);
                                        color: #fff; }
.legend { color: var(--muted); margin-left: 10px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
      vertical-align: -1px; margin: 0 3px 0 6px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(216px, 1fr));
        gap: 12px; padding: 16px 20px; }
.card { margin: 0; background: var(--card); border-radius: 8px; overflow: hidden;
        box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.card a.thumb { display: flex; align-items: center; justify-content: center; height: 200px;
                background: #20242c; }
.card img { max-width: 100%; max-height: 200px; object-fit: contain; }
.card img.px { image-rendering: pixelated; max-height: none; }
figcaption { padding: 8px 10px 10px; }
.name { font-weight: 600; word-break: break-all; }
.stats { color: var(--muted); font-variant-numeric: tabular-nums; }
.stats b { color: var(--ink); font-weight: 600; }
.files a { color: var(--accent); text-decoration: none; margin-right: 8px; font-size: 12px; }
.empty { padding: 20px; color: var(--muted); }
section.failed { margin: 0 20px 24px; padding: 12px 14px; background: #fff3f2;
                 border: 1px solid #f1c1bc; border-radius: 8px; }
section.failed td { padding: 2px 12px 2px 0; vertical-align: top; }
section.failed td:first-child { font-weight: 600; word-break: break-all; }
"""

# Sorting: cards carry data-unc / data-dice / data-area / data-name; missing numbers (no
# ground truth, or a metric that is not finite) always go last, whatever the direction.
_JS = """
(function () {
  var grid = document.getElementById('grid');
  var buttons = Array.prototype.slice.call(document.querySelectorAll('[data-sort]'));
  var defaults = {unc: 'desc', dice: 'asc', area: 'desc', name: 'asc'};
  var state = {key: null, dir: null};
  function value(card, key) {
    var v = card.getAttribute('data-' + key);
    if (key === 'name') return v;
    return v === '' ? null : parseFloat(v);
  }
  function sortBy(key, dir) {
    var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
    var sign = dir === 'asc' ? 1 : -1;
    cards.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      if (x === null || y === null) {
        if (x === y) return value(a, 'name') < value(b, 'name') ? -1 : 1;
        return x === null ? 1 : -1;
      }
      if (x < y) return -sign;
      if (x > y) return sign;
      return value(a, 'name') < value(b, 'name') ? -1 : 1;
    });
    cards.forEach(function (c) { grid.appendChild(c); });
    state = {key: key, dir: dir};
    buttons.forEach(function (b) {
      var on = b.getAttribute('data-sort') === key;
      b.setAttribute('aria-pressed', on ? 'true' : 'false');
      var arrow = b.querySelector('.dir');
      if (arrow) arrow.textContent = on ? (dir === 'asc' ? ' \\u2191' : ' \\u2193') : '';
    });
    document.body.setAttribute('data-sorted', key + '-' + dir);
  }
  buttons.forEach(function (b) {
    b.addEventListener('click', function () {
      var key = b.getAttribute('data-sort');
      var dir = state.key === key ? (state.dir === 'asc' ? 'desc' : 'asc') : defaults[key];
      sortBy(key, dir);
      try { history.replaceState(null, '', '#sort=' + key + '-' + dir); } catch (e) {}
    });
  });
  var m = /sort=(unc|dice|area|name)-(asc|desc)/.exec(location.hash);
  if (m && document.querySelector('[data-sort="' + m[1] + '"]')) sortBy(m[1], m[2]);
  else sortBy('unc', 'desc');
})();
"""


def _card(rec: dict) -> str:
    e = html.escape
    metrics = rec.get("metrics") or {}
    dice = metrics.get("dice")
    thumb = rec.get("thumbnail") or ""
    th, tw = rec.get("thumbnail_size") or (0, 0)
    outputs = rec.get("outputs", {})
    target = outputs.get("overlay") or outputs.get("mask") or ""
    labels = (("mask", "mask"), ("probability", "probability"),
              ("uncertainty", "heatmap"), ("overlay", "overlay"))
    files = " ".join(f'<a href="{e(_href(outputs[k]))}">{lab}</a>'
                     for k, lab in labels if k in outputs)
    stats = [f"{rec['width']}&times;{rec['height']}",
             f"area <b>{_fmt(100 * rec['area_fraction'], '.1f')}%</b>",
             f"uncertainty <b>{_fmt(rec['mean_uncertainty'], '.4f')}</b>"]
    if rec.get("metrics") is not None:
        stats.append(f"Dice <b>{_fmt(dice, '.3f')}</b>")
    # Thumbnails are never made larger than the image; small ones are shown enlarged to
    # the 200 px box (2x or more: with sharp pixels, so a 1 x 1 image is a clean square).
    px = ""
    if th and tw and max(th, tw) < THUMB_MAX:
        f = THUMB_MAX / max(th, tw)
        sharp = ' class="px"' if f >= 2 else ""
        px = f'{sharp} style="width:{max(1, round(tw * f))}px;height:{max(1, round(th * f))}px"'
    img = f'<img src="{thumb}" alt="{e(rec["key"])} overlay"{px}>' if thumb else ""
    return (f'<figure class="card" data-name="{e(rec["key"])}" '
            f'data-unc="{_num(rec["mean_uncertainty"])}" data-dice="{_num(dice)}" '
            f'data-area="{_num(rec["area_fraction"])}">'
            f'<a class="thumb" href="{e(_href(target))}">{img}</a>'
            f'<figcaption><div class="name">{e(rec["key"])}</div>'
            f'<div class="stats">{" &middot; ".join(stats)}</div>'
            f'<div class="files">{files}</div></figcaption></figure>')


def render_report(records: list[dict], failures: list[tuple[str, str]], info: dict) -> str:
    """The report's HTML. records: per-image dicts as in results.json plus "thumbnail"
    (a data URI) and "thumbnail_size"; failures: (name, reason); info: "title",
    "settings" (dict), "counts" (dict), and optionally "summary" (ground-truth metrics)."""
    e = html.escape
    has_gt = any(r.get("metrics") is not None for r in records)
    counts = info.get("counts", {})
    settings = info.get("settings", {})
    meta = [f"{len(records)} images"]
    meta += [f"{k} {v}" for k, v in counts.items() if v]
    meta += [f"{k} {v}" for k, v in settings.items() if v is not None]
    summary = info.get("summary")
    if summary:
        meta.append(f"mean Dice {_fmt(summary.get('dice_mean'), '.4f')}")
    buttons = [("unc", "Uncertainty")] + ([("dice", "Dice")] if has_gt else []) + \
              [("area", "Area"), ("name", "Name")]
    controls = "".join(f'<button type="button" data-sort="{k}" aria-pressed="false">'
                       f'{lab}<span class="dir"></span></button>' for k, lab in buttons)
    cards = "\n".join(_card(r) for r in records) or \
        '<p class="empty">No image was segmented.</p>'
    failed = ""
    if failures:
        rows = "".join(f"<tr><td>{e(n)}</td><td>{e(_reason(n, why))}</td></tr>"
                       for n, why in failures)
        failed = (f'<section class="failed"><h2>Failed ({len(failures)})</h2>'
                  f"<table>{rows}</table></section>")
    title = e(info.get("title", "dsd-fast segment"))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="meta">{e(" · ".join(meta))}</p>
<div class="controls">Sort by {controls}
<span class="legend"><span class="sw" style="background:#00ff00"></span>lesion contour
<span class="sw" style="background:#ffc800"></span>uncertain (ensemble std &gt; 0.2);
uncertainty = mean ensemble std</span></div>
</header>
<main id="grid">
{cards}
</main>
{failed}
<script>{_JS}</script>
</body>
</html>
"""
