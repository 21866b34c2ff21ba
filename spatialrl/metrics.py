"""One metrics path: namespaced keys -> `metrics.jsonl` and the Ray dashboard, read back for plots.

Keys look like `reward/mean`, `loss/policy`, `perf/images_per_s`. Each `log(step, values)` appends one JSON line
and sets a `ray.util.metrics.Gauge` per key, named `spatialrl_<key with / -> _>` (Prometheus shows them with a
`ray_` prefix), tagged with the run name, so the dashboard's Metrics view and Grafana see the same numbers.

Dashboard continuity: Ray's metrics agent drops a gauge that was not set again for about two report intervals
(measured on Ray 2.60: a gauge set once is on the endpoint from ~10 s to ~30 s after it was set, even with its
process alive), while a FLUX.1-dev GRPO step takes minutes. So each process re-sets its gauges' last values
every `REFRESH_S` from one daemon thread, and `linger_for_dashboard()` (called when a job on a running cluster
ends) keeps them up long enough for one export, so a job's last numbers reach the endpoint too.

Crash safety: a row is one `write` of one line to a file opened for appending, so a crash can at worst leave
the last line unfinished. `read_metrics` drops such a torn last line (a torn line anywhere else is an error),
a new `MetricsLogger` cuts it off before appending, and `truncate_after` (a resumed run) rewrites the file
atomically (temp file + os.replace, as spatialrl/atomic.py does; a room on floor 0 does not import another).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

REFRESH_S = 5.0  # re-set every gauge this often, well inside the agent's expiry

_live_lock = threading.Lock()
_live: dict[tuple[str, tuple], tuple[object, float, dict]] = {}  # (gauge, tags) -> (Gauge, value, tags)
_last_set = 0.0
_refresher: threading.Thread | None = None


def _remember(gauge, name: str, value: float, tags: dict) -> None:
    global _refresher, _last_set
    with _live_lock:
        _live[(name, tuple(sorted(tags.items())))] = (gauge, value, tags)
        _last_set = time.time()
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_forever, name="spatialrl-metrics-refresh", daemon=True)
            _refresher.start()


def _refresh_forever() -> None:
    import ray

    while True:
        time.sleep(REFRESH_S)
        with _live_lock:
            if not ray.is_initialized():  # the session ended: its gauges go with it; a new one starts empty
                _live.clear()
            items = list(_live.values())
        for gauge, value, tags in items:
            try:
                gauge.set(value, tags=tags)
            except Exception:  # Ray shutting down under us: this round has nothing to export to
                break


def report_interval_s() -> float:
    """How often Ray's workers export their metrics (RAY_metrics_report_interval_ms, default 10 s)."""
    return float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000


def linger_for_dashboard(seconds: float | None = None) -> float:
    """Keep this process (and its refreshed gauges) alive until its last values were exported at least once:
    a report interval and a margin after the last `log`. Returns the seconds waited (0 if no gauge was set)."""
    with _live_lock:
        if not _live:
            return 0.0
        wait = (report_interval_s() + 3.0 if seconds is None else seconds) - (time.time() - _last_set)
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)


def gauge_name(key: str) -> str:
    return "spatialrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class MetricsLogger:
    def __init__(self, path: str | Path, run: str = "run", *, dashboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self.run = run
        self.dashboard = dashboard
        self._gauges: dict = {}

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        line = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of the whole line: a crash tears at most this last line
        finally:
            os.close(fd)
        if self.dashboard:
            self._export(row)

    def _export(self, row: dict) -> None:
        import ray
        from ray.util.metrics import Gauge

        if not ray.is_initialized():
            return
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            if key not in self._gauges:
                self._gauges[key] = Gauge(gauge_name(key), description=key, tag_keys=("run",))
            tags = {"run": self.run}
            self._gauges[key].set(float(value), tags=tags)
            _remember(self._gauges[key], gauge_name(key), float(value), tags)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run redoes them)."""
        rows = [r for r in read_metrics(self.path) if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


def service_metrics() -> dict:
    """The reward service's counters and histograms, named like the gauges (`spatialrl_serve_*`)."""
    from ray.util.metrics import Counter, Histogram

    return {
        "requests": Counter(gauge_name("serve/requests"), description="HTTP requests by status", tag_keys=("status",)),
        "items": Counter(gauge_name("serve/items"), description="(prompt, image) items scored or asked for"),
        "batch_size": Histogram(gauge_name("serve/batch_size"), description="requests per @serve.batch call",
                                boundaries=[1, 2, 4, 8, 16, 32, 64]),
        "latency_ms": Histogram(gauge_name("serve/latency_ms"), description="HTTP request latency (ms)",
                                boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]),
    }


class MetricsFileError(ValueError):
    """metrics.jsonl has a broken line before its last one: not a crash's torn tail, so not dropped silently."""


def read_metrics(path: str | Path) -> list[dict]:
    """Every row of a metrics.jsonl; an unfinished last line (a crash mid-append) is dropped with a note."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError:
            if n == len(lines):
                print(f"note: {p}: dropped a torn last line (a crash while it was written)", file=sys.stderr)
                break
            raise MetricsFileError(f"{p}:{n} is not a metrics row ({line[:60]!r}); the file was edited or damaged: "
                                   "fix or delete that line") from None
        rows.append(row)
    return rows


def drop_torn_tail(path: str | Path) -> None:
    """Cut an unfinished last line off `path` (no trailing newline: a crash mid-append), so appends stay whole."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return
    data = p.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data[: data.rfind(b"\n") + 1]
    print(f"note: {p}: cut a torn last line (a crash while it was written)", file=sys.stderr)
    write_text(p, keep.decode())


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot_metrics(metrics_path: str | Path, out_png: str | Path, panels: list[tuple[str, list[tuple[str, str]]]],
                 *, xlabel: str = "step", ylims: dict[str, tuple[float, float]] | None = None,
                 extra_rows: list[dict] | None = None) -> bool:
    """The one curve plotter: one panel per (title, [(key, label), ...]); each series is drawn over the rows that
    have its key (train and validation rows can share a file), in step order; `extra_rows` are drawn as if they were
    in the file (points measured outside the loop, e.g. before its first step). Writes `out_png`; False when there is
    no row."""
    rows = read_metrics(metrics_path) + list(extra_rows or [])
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.5), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for key, label in series:
            pts = sorted(((r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))),
                         key=lambda p: p[0])
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 60 else None, label=label)
        if len(series) > 1:
            ax.legend()
        if ylims and title in ylims:
            ax.set_ylim(*ylims[title])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v
