"""One metrics path: namespaced keys -> `metrics.jsonl` and the Ray dashboard, read back for plots.

Keys look like `reward/mean`, `loss/policy`, `perf/images_per_s`. Each `log(step, values)` appends one JSON line
and sets a `ray.util.metrics.Gauge` per key, named `spatialrl_<key with / -> _>` (Prometheus shows them with a
`ray_` prefix), tagged with the run name, so the dashboard's Metrics view and Grafana see the same numbers.

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
from pathlib import Path


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
            self._gauges[key].set(float(value), tags={"run": self.run})

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


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v
