"""The one curve plotter: every series drawn over the rows that carry its key, nothing drawn for an empty file."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from spatialrl.metrics import MetricsLogger, plot_metrics


def test_plot_metrics_draws_each_series_over_the_rows_that_have_its_key(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path, dashboard=False)
    for step in range(1, 7):
        log.log(step, {"loss/reward": 1.0 / step, "train/running_accuracy": 0.5 + step / 20})
        if step % 3 == 0:
            log.log(step, {"val/accuracy": 0.6 + step / 30})  # validation rows interleaved, other keys
    drawn = {}
    import matplotlib.axes

    real_plot = matplotlib.axes.Axes.plot

    def spy(ax, *args, label=None, **kw):
        drawn[label] = (list(args[0]), list(args[1]))
        return real_plot(ax, *args, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    out = tmp_path / "curves.png"
    assert plot_metrics(path, out, [("loss", [("loss/reward", "train")]),
                                    ("accuracy", [("train/running_accuracy", "running"), ("val/accuracy", "val")]),
                                    ("absent", [("policy/clip_fraction", "clip")])], ylims={"accuracy": (0, 1)})
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert drawn["train"] == ([1, 2, 3, 4, 5, 6], [1.0, 0.5, 1 / 3, 0.25, 0.2, 1 / 6])
    assert drawn["val"] == ([3, 6], [0.7, 0.8])
    assert "clip" not in drawn  # a key no row has draws nothing (and does not fail)
    assert not plot_metrics(tmp_path / "missing.jsonl", tmp_path / "none.png", [("x", [("a", "a")])])
    assert not (tmp_path / "none.png").exists()
