"""One metrics path: namespaced keys -> `metrics.jsonl` and the Ray dashboard, read back for plots.

Keys look like `reward/mean`, `loss/policy`, `perf/images_per_s`. Each `log(step, values)` appends one JSON line
and sets a `ray.util.metrics.Gauge` per key, named `spatialrl_<key with / -> _>` (Prometheus shows them with a
`ray_` prefix), tagged with the run name, so the dashboard's Metrics view and Grafana see the same numbers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def gauge_name(key: str) -> str:
    return "spatialrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class MetricsLogger:
    def __init__(self, path: str | Path, run: str = "run", *, dashboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.dashboard = dashboard
        self._gauges: dict = {}

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
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
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))


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


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v
