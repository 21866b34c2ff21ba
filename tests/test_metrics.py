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


def test_grpo_curves_put_the_held_out_evaluations_at_their_steps_and_fit_the_objective(tmp_path, monkeypatch):
    """actors.grpo_controller.plot_curves: eval.json's base at step 0 and final at the last step join the logged
    `grpo.eval_every` points; fm / nft (ratio 1 by construction) show object presence where grpo shows the clip
    fraction, and the console line drops ratio and clip for them."""
    import matplotlib.axes

    from actors.grpo_controller import _progress, plot_curves

    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path, dashboard=False)
    for step in (1, 2, 3, 4):
        row = {"reward/mean": step, "verifier/relation_accuracy": 0.5, "verifier/object_presence": 0.8,
               "policy/ratio_mean": 1.0, "policy/clip_fraction": 0.0}
        if step == 2:
            row.update({"eval/relation_accuracy": 0.6, "eval/object_presence": 0.85})
        log.log(step, row)
    evals = {"base": {"relation_accuracy": 0.55, "object_presence": 0.8}, "step_2": {"relation_accuracy": 0.6},
             "final": {"relation_accuracy": 0.7, "object_presence": 0.9}}
    drawn: dict[str, list] = {}
    real_plot = matplotlib.axes.Axes.plot

    def spy(ax, *args, label=None, **kw):
        drawn.setdefault(label, []).append((list(args[0]), list(args[1])))
        return real_plot(ax, *args, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_curves(path, tmp_path / "nft.png", objective="nft", evals=evals, steps=4)
    assert drawn["held-out (ODE)"] == [([0, 2, 4], [0.55, 0.6, 0.7]), ([0, 2, 4], [0.8, 0.85, 0.9])]
    assert "clip" not in drawn and drawn["rollouts"][1] == ([1, 2, 3, 4], [0.8] * 4)
    drawn.clear()
    plot_curves(path, tmp_path / "grpo.png", objective="grpo", evals=evals, steps=4)
    assert drawn["clip"] == [([1, 2, 3, 4], [0.0] * 4)] and len(drawn["held-out (ODE)"]) == 1
    row = {"reward/mean": 1.0, "policy/ratio_mean": 1.0, "policy/clip_fraction": 0.0, "verifier/object_presence": 0.9}
    assert "ratio" not in _progress(1, 4, row, "nft") and "presence 0.900" in _progress(1, 4, row, "nft")
    assert "ratio 1.00000 | clip 0.00" in _progress(1, 4, row, "grpo")
