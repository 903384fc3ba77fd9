"""Prometheus metrics in the text exposition format (version 0.0.4), written here.

No client library: the server needs counters, two gauges read at scrape time and
histograms, ~100 lines; Prometheus, VictoriaMetrics and the OpenTelemetry collector all
read this format. Endpoint labels are the app's own route names (never the raw request
path), so a client cannot create label values.
"""
from __future__ import annotations

import threading
from typing import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
           for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1


class Metrics:
    """Thread-safe (the worker thread reports batches) store of the server's metrics."""

    def __init__(self, prefix: str = "dsd_fast"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = {}           # (endpoint, status) -> count
        self._errors: dict[str, int] = {}               # error code -> count
        self._latency: dict[str, _Histogram] = {}       # endpoint -> seconds
        self._batch_images = _Histogram(BATCH_BUCKETS)
        self._batch_seconds = _Histogram(LATENCY_BUCKETS)
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge whose value `read()` gives at scrape time."""
        self._gauges[name] = (help_text, read)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, code: str) -> None:
        with self._lock:
            self._errors[code] = self._errors.get(code, 0) + 1

    def batch(self, images: int, seconds: float) -> None:
        with self._lock:
            self._batch_images.observe(images)
            self._batch_seconds.observe(seconds)

    # ------------------------------------------------------------------ exposition
    def _histogram_lines(self, name: str, hist: _Histogram, labels: dict) -> list[str]:
        lines = [f"{name}_bucket{_labels({**labels, 'le': _num(b)})} {c}"
                 for b, c in zip(hist.buckets, hist.counts)]
        lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {hist.count}")
        lines.append(f"{name}_sum{_labels(labels)} {hist.sum!r}")
        lines.append(f"{name}_count{_labels(labels)} {hist.count}")
        return lines

    def render(self) -> str:
        p = self.prefix
        out = [f"# HELP {p}_requests_total HTTP requests answered, by endpoint and status.",
               f"# TYPE {p}_requests_total counter"]
        with self._lock:
            for (endpoint, status), n in sorted(self._requests.items()):
                labels = _labels({"endpoint": endpoint, "status": status})
                out.append(f"{p}_requests_total{labels} {n}")
            out += [f"# HELP {p}_errors_total Requests refused or failed, by error code.",
                    f"# TYPE {p}_errors_total counter"]
            for code, n in sorted(self._errors.items()):
                out.append(f"{p}_errors_total{_labels({'code': code})} {n}")
            out += [f"# HELP {p}_request_duration_seconds Time from request to response.",
                    f"# TYPE {p}_request_duration_seconds histogram"]
            for endpoint, hist in sorted(self._latency.items()):
                out += self._histogram_lines(f"{p}_request_duration_seconds", hist,
                                             {"endpoint": endpoint})
            out += [f"# HELP {p}_batch_images Images per segment() call of the batcher.",
                    f"# TYPE {p}_batch_images histogram"]
            out += self._histogram_lines(f"{p}_batch_images", self._batch_images, {})
            out += [f"# HELP {p}_batch_duration_seconds Time of one batch (segment and "
                    "encode).", f"# TYPE {p}_batch_duration_seconds histogram"]
            out += self._histogram_lines(f"{p}_batch_duration_seconds", self._batch_seconds,
                                         {})
        for name, (help_text, read) in sorted(self._gauges.items()):
            out += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} gauge",
                    f"{p}_{name} {_num(read())}"]
        return "\n".join(out) + "\n"
