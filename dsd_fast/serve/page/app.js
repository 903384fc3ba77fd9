// The page of `dsd-fast serve`: choose or drop images, POST each to /v1/segment (all at
// once, so the server can batch them), show overlay, probability and uncertainty side by
// side with download links (a model of several classes: each class's maps, and a legend
// of the overlay's class colours). Plain DOM, no library, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), fileInput = $("file"), drop = $("drop"), runButton = $("run");
const statusLine = $("status"), progress = $("progress"), results = $("results");
const OPTION_IDS = ["steps", "ensemble", "seed", "spacing", "postprocess"];
let chosen = [];             // the File objects to segment
let inFlight = 0;
let modelsLoaded = false;

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function busy(delta) {
  inFlight += delta;
  progress.hidden = inFlight === 0;
  results.setAttribute("aria-busy", String(inFlight > 0));
  runButton.disabled = inFlight > 0 || chosen.length === 0 || !modelsLoaded;
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const info = await r.json();
    const select = $("model");
    for (const m of info.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.family ? `${m.name} (${m.family})` : m.name;
      option.title = m.terms || "";
      option.selected = m.name === info.default;
      select.appendChild(option);
    }
    modelsLoaded = true;
    say("Choose or drop images to segment.");
  } catch (e) {
    say(`Could not read the models list: ${e.message}`, true);
  }
  busy(0);
}

function choose(files) {
  chosen = Array.from(files).filter((f) => f.size > 0);
  $("chosen").textContent = chosen.length
    ? `${chosen.length} image${chosen.length > 1 ? "s" : ""}: ${chosen.map((f) => f.name).join(", ")}`
    : "";
  busy(0);
  if (chosen.length && modelsLoaded) segmentAll();
}

function pngUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

function stem(name) {
  return name.replace(/\.[^.]+$/, "") || "image";
}

function setImage(img, base64, alt, body) {
  img.src = pngUrl(base64);
  img.alt = alt;
  img.width = body.width;
  img.height = body.height;
}

function setDownload(a, base64, name, what) {
  a.href = pngUrl(base64);
  a.download = name;
  a.setAttribute("aria-label", `download the ${what}`);
}

function runSummary(body) {
  const o = body.options;
  return `mean uncertainty ${body.mean_uncertainty.toFixed(4)}; ` +
    `${o.ensemble} members x ${o.steps} ${o.spacing} steps, seed ${o.seed}, clean-up ` +
    `${o.postprocess}; ${Math.round(body.timings_ms.total)} ms` +
    (body.batch_images > 1 ? ` (batched with ${body.batch_images - 1} other image` +
     `${body.batch_images === 2 ? "" : "s"})` : "") + ".";
}

// A model of several classes: the overlay outlines each class in its colour (a legend
// names them), and each class has its own probability and uncertainty figures and links.
function showClasses(card, file, body) {
  const label = file.name, base = stem(file.name);
  setImage(card.querySelector("img.overlay"), body.png.overlay, `overlay of ${label}`, body);
  const caption = card.querySelector("img.overlay").closest("figure")
    .querySelector("figcaption");
  caption.replaceChildren("Overlay: ");
  const legend = document.createElement("span");
  legend.className = "legend";
  for (const c of body.classes) {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = c.colour;     // CSSOM, allowed by the page's CSP
    const item = document.createElement("span");
    item.className = "class-item";
    item.append(swatch, ` ${c.name} (label ${c.label})`);
    legend.append(item);
  }
  caption.append(legend, "; uncertain band (amber)");
  const figures = card.querySelector(".figures");
  for (const kind of ["probability", "uncertainty"]) {
    card.querySelector(`img.${kind}`).closest("figure").remove();
    card.querySelector(`.dl-${kind}`).remove();
  }
  const overlayLink = card.querySelector(".dl-overlay");
  for (const c of body.classes) {
    for (const kind of ["probability", "uncertainty"]) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.className = `${kind} class-map`;
      img.dataset.class = c.name;
      setImage(img, c.png[kind], `${kind} of ${c.name} in ${label}`, body);
      const text = document.createElement("figcaption");
      text.textContent = `${kind === "probability" ? "Probability" : "Uncertainty"}: ${c.name}`;
      figure.append(img, text);
      figures.append(figure);
      const a = document.createElement("a");
      a.className = `dl-${kind}-class`;
      a.textContent = `${c.name} ${kind}`;
      setDownload(a, c.png[kind], `${base}_${kind}_${c.name}.png`, `${c.name} ${kind} of ${label}`);
      overlayLink.before(a, " ");
    }
  }
  const mask = card.querySelector(".dl-mask");
  mask.textContent = "labels";
  setDownload(mask, body.png.labels, `${base}_labels.png`, `label map of ${label}`);
  setDownload(overlayLink, body.png.overlay, `${base}_overlay.png`, `overlay of ${label}`);
  const areas = body.classes.map((c) => `${c.name} ${(100 * c.area_fraction).toFixed(1)}%`);
  card.querySelector(".stats").textContent =
    `Class areas: ${areas.join(", ")} of ${body.width} x ${body.height} px; ` + runSummary(body);
}

function showResult(file, body) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  const label = file.name;
  const base = stem(file.name);
  if (body.classes) {
    showClasses(card, file, body);
  } else {
    for (const kind of ["overlay", "probability", "uncertainty"]) {
      setImage(card.querySelector(`img.${kind}`), body.png[kind], `${kind} of ${label}`, body);
    }
    card.querySelector(".stats").textContent =
      `Lesion area ${(100 * body.area_fraction).toFixed(1)}% (${body.area_pixels} px of ` +
      `${body.width} x ${body.height}); ` + runSummary(body);
    for (const kind of ["mask", "probability", "uncertainty", "overlay"]) {
      setDownload(card.querySelector(`.dl-${kind}`), body.png[kind], `${base}_${kind}.png`,
                  `${kind} of ${label}`);
    }
  }
  const json = card.querySelector(".dl-json");
  json.href = URL.createObjectURL(new Blob([JSON.stringify(body)], {type: "application/json"}));
  json.download = `${base}_result.json`;
  json.setAttribute("aria-label", `download the JSON result of ${label}`);
  return card;
}

function showError(file, message) {
  const card = document.createElement("article");
  card.className = "result";
  const h = document.createElement("h2");
  h.textContent = file.name;
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  card.append(h, p);
  return card;
}

async function segmentOne(file, slot) {
  const data = new FormData();
  data.append("file", file, file.name);
  data.append("model", $("model").value);
  for (const id of OPTION_IDS) {
    const value = $(id).value.trim();
    if (value !== "") data.append(id, value);
  }
  try {
    const r = await fetch("/v1/segment", {method: "POST", body: data});
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const why = body.error ? body.error.message : `HTTP ${r.status}`;
      slot.replaceWith(showError(file, `Not segmented: ${why}`));
      return false;
    }
    slot.replaceWith(showResult(file, body));
    return true;
  } catch (e) {
    slot.replaceWith(showError(file, `Not segmented: the server could not be reached (${e.message})`));
    return false;
  }
}

async function segmentAll() {
  const files = chosen.slice();
  if (!files.length) return;
  results.replaceChildren();
  const started = performance.now();
  say(`Segmenting ${files.length} image${files.length > 1 ? "s" : ""}…`);
  busy(+1);
  const slots = files.map(() => results.appendChild(document.createElement("div")));
  const ok = await Promise.all(files.map((f, i) => segmentOne(f, slots[i])));
  busy(-1);
  const good = ok.filter(Boolean).length;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  say(`Done: ${good} of ${files.length} segmented in ${seconds} s.`, good < files.length);
}

fileInput.addEventListener("change", () => choose(fileInput.files));
form.addEventListener("submit", (e) => { e.preventDefault(); segmentAll(); });
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files));
loadModels();
