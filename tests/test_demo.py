"""`make demo` end to end (slow tier): every stage runs and the summary holds the before/after numbers."""

import json

import pytest


@pytest.mark.slow
@pytest.mark.ray
def test_demo_chain_end_to_end(tmp_path, ray_local):
    from jobs import demo

    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--pairs", "300", "--set", "grpo.steps=3", "--set", "grpo.eval_prompts=4",
                    "--set", "grpo.prompts_per_step=2", "--control"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["chosen_all_hold"] == 1.0 and summary["dataset"]["rejected_exact_violations"] == 1.0
    assert 0.0 <= summary["reward_model"]["accuracy"] <= 1.0 and summary["reward_model"]["n_pairs"] > 0
    g = summary["grpo"]
    assert g["steps"] == 3 and g["held_out_prompts"] == 4
    for side in ("base", "after_grpo"):
        assert 0.0 <= g[side]["relation_accuracy"] <= 1.0
    assert (out / "grpo" / "final" / "pytorch_lora_weights.safetensors").exists()
    c = summary["control"]  # the same GRPO with the verifier as the reward
    assert c["steps"] == 3 and (out / "control" / "final" / "pytorch_lora_weights.safetensors").exists()
    for key in ("relation_accuracy", "object_presence"):  # the same base generator, prompts and seeds
        assert c["base"][key] == g["base"][key]
    assert c["base"]["spatialscore"] is None  # the control's reward is the verifier: no SpatialScore to report
    assert c["images"] == len(json.loads((out / "control" / "eval.json").read_text())["base"]
                              ["relation_accuracy_per_image"])
    assert c["verifier_gain_se"] >= 0 and c["reward_hacking"]["fired_steps"] == []
    # a second call reuses every stage
    assert demo.main(["--out", str(out), "--pairs", "300"]) == 0


def test_demo_config_defaults_and_bad_splits(capsys, tmp_path):
    # the default demo builds >= 500 test pairs on the curriculum backbone; bad splits are a config error
    from jobs import demo
    from jobs.build_dataset import split_sizes

    assert demo.main(["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "qwen2_5_vl_curriculum/s5m_missing_objects" in text
    assert "tiny-pretrained/flux_trained_t5" in text  # the generator whose T5 tells the sides
    cfg = demo.DemoConfig()
    assert split_sizes(cfg.pairs, cfg.splits)["test"] >= 500
    assert demo.main(["--dry-run", "--set", "splits=[0.5,0.5]"]) == 2
    assert "splits" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"train": {"pairs": 9}, "val": {"pairs": 1},
                                                                   "test": {"pairs": 2}}}))
    assert demo.dataset_sizes(tmp_path) == {"train": 9, "val": 1, "test": 2}


def test_demo_summary_prints_rounded_numbers_and_the_paired_gain(tmp_path, capsys):
    # the closing table: four decimals, the paired gain with its standard error (worked by hand), percentages
    from jobs import demo

    (tmp_path / "verify.json").write_text(json.dumps({"n_pairs": 10, "chosen_all_hold": 1.0,
                                                      "rejected_exact_violations": 1.0}))
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "eval.json").write_text(json.dumps({"accuracy": 0.968253968, "accuracy_1pert": 0.9584,
                                                               "accuracy_2to3pert": 0.993, "n_pairs": 504}))
    (tmp_path / "grpo").mkdir()
    base = {"prompts": 2, "images": 4, "spatialscore": 0.2014123, "relation_accuracy": 0.5,
            "object_presence": 0.75, "relation_accuracy_per_image": [0.0, 1.0, 0.5, 0.5],
            "object_presence_per_image": [1.0, 1.0, 0.5, 0.5]}
    final = dict(base, spatialscore=0.3, relation_accuracy=0.75, relation_accuracy_per_image=[1.0, 1.0, 0.5, 0.5])
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({"steps": 3, "base": base, "final": final}))
    s = demo.summarize(tmp_path, 12.0)
    text = capsys.readouterr().out
    # differences 1, 0, 0, 0: mean 0.25, std (ddof 1) 0.5, se 0.5 / 2 = 0.25
    assert s["grpo"]["verifier_gain"] == 0.25 and s["grpo"]["verifier_gain_se"] == 0.25
    assert "| after GRPO (SpatialScore reward) | 0.3000 | 0.7500 | 0.7500 | +0.2500 +- 0.2500 |" in text
    assert "| base generator | 0.2014 | 0.5000 | 0.7500 |  |" in text
    assert "96.8% (1-pert 95.8%, 2-3-pert 99.3%, 504 pairs)" in text
    assert "4 held-out images of 2 prompts" in text
    assert "spatialscore_agreement" not in s["grpo"] and "orders a prompt's" not in text  # the run did not record it
    base["spatialscore_agreement"], final["spatialscore_agreement"] = 0.875, 0.5
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({"steps": 3, "base": base, "final": final}))
    s = demo.summarize(tmp_path, 12.0)
    assert s["grpo"]["spatialscore_agreement"] == {"base": 0.875, "after_grpo": 0.5}
    text = capsys.readouterr().out
    assert "as the verifier does in 87.5% of the pairs the verifier tells apart before GRPO, 50.0% after" in text
