"""jobs.eval_reward: the metrics by hand (unit) and the Ray Data batch-inference job end to end (ray tier)."""

import json

import numpy as np
import pytest

from jobs.eval_reward import markdown_table, metrics


def test_metrics_by_hand():
    rows = {"m_chosen": np.array([1.0, 2.0, 3.0, 0.5]), "m_rejected": np.array([0.0, 3.0, 1.0, 0.5]),
            "num_perturbations": np.array([1, 2, 3, 1])}
    m = metrics(rows, "m")
    assert m["accuracy"] == 0.5  # wins: pair 0 and pair 2; a tie is not a win
    assert m["accuracy_1pert"] == 0.5 and m["accuracy_2to3pert"] == 0.5
    assert (m["n_pairs"], m["n_1pert"], m["n_2to3pert"]) == (4, 2, 2)
    assert m["mean_score_chosen"] == pytest.approx(1.625)
    assert m["accuracy_missing_object"] is None and m["accuracy_moved"] is None and m["n_missing_object"] == 0
    # pairs 1 and 2 leave an object out: one win of two; the moved ones (0, 3): one of two
    rows["missing_object"] = np.array([False, True, True, False])
    m = metrics(rows, "m")
    assert (m["accuracy_missing_object"], m["accuracy_moved"], m["n_missing_object"]) == (0.5, 0.5, 2)
    rows["missing_object"] = np.array([False, False, True, False])
    m = metrics(rows, "m")
    assert m["accuracy_missing_object"] == 1.0 and m["accuracy_moved"] == pytest.approx(1 / 3)
    report = {"data": "d", "split": "test", "vlm_judge": None, "baselines": {}, **m}
    assert "1 rejected images leave an object out: SpatialScore 100.0 on those, 33.3 on the moved ones" \
        in markdown_table(report)
    assert m["accuracy_wrong_shape"] is None and m["n_wrong_shape"] == 0
    # pair 0 draws an object in another shape (a win): the moved ones are now 1 and 3, neither won
    rows["wrong_shape"] = np.array([True, False, False, False])
    m = metrics(rows, "m")
    assert (m["accuracy_wrong_shape"], m["n_wrong_shape"], m["accuracy_moved"]) == (1.0, 1, 0.0)
    report = {"data": "d", "split": "test", "vlm_judge": None, "baselines": {}, **m}
    assert ("1 rejected images leave an object out: SpatialScore 100.0 on those; 1 draw one in another shape: "
            "SpatialScore 100.0 on those, 0.0 on the moved ones") in markdown_table(report)


@pytest.mark.ray
def test_eval_job_end_to_end(ray_local, tmp_path):
    from jobs.build_dataset import main as build
    from jobs.eval_reward import main as evaluate
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel

    data = tmp_path / "ds"
    assert build(["--pairs", "60", "--out", str(data), "--set", "splits=[0.5, 0.1, 0.4]", "--set", "pairs_per_block=20"]) == 0
    ckpt = SpatialRewardModel(RewardModelConfig(lora_rank=4), seed=1).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    assert evaluate(["--checkpoint", str(ckpt), "--data", str(data), "--json", str(out), "--batch-size", "8"]) == 0
    report = json.loads(out.read_text())
    assert report["n_pairs"] == 24 and report["n_1pert"] + report["n_2to3pert"] == 24
    for m in (report, *report["baselines"].values()):
        assert 0.0 <= m["accuracy"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert "| SpatialScore (this checkpoint) |" in table and "95.8" in table
    # the zero-shot VLM judge (here the checkpoint's own tiny backbone) is a baseline column of the same table
    assert report["vlm_judge"] == "tiny" and 0.0 <= report["baselines"]["vlm_judge"]["accuracy"] <= 1.0
    assert "| baseline: VLM judge, zero-shot P(yes) (tiny) |" in table
    assert 0.0 < report["baselines"]["vlm_judge"]["mean_score_chosen"] < 1.0  # a probability
    assert evaluate(["--checkpoint", str(tmp_path), "--data", str(data)]) == 2  # not a checkpoint: clear error
    missing = tmp_path / "no-such-qwen"
    assert evaluate(["--checkpoint", str(ckpt), "--data", str(data), "--vlm-judge", str(missing)]) == 2
    # without the head baselines: SpatialScore and the VLM judge only, the same SpatialScore numbers
    lean = tmp_path / "lean.json"
    assert evaluate(["--checkpoint", str(ckpt), "--data", str(data), "--json", str(lean), "--batch-size", "8",
                     "--no-head-baselines"]) == 0
    lean_report = json.loads(lean.read_text())
    assert set(lean_report["baselines"]) == {"vlm_judge"} and lean_report["accuracy"] == report["accuracy"]
