"""jobs.eval_backbone: the teacher-free questions, the job end to end on the shipped backbone, folder errors."""

import json

import numpy as np
import pytest

from data_pipeline.relations import CONVERSE, relation_score
from data_pipeline.world import load_world_preset
from spatialrl.standins.backbone_eval import check_backbone_folder, relation_questions
from spatialrl.config import ConfigError

SHIPPED = "assets/tiny-pretrained/qwen2_5_vl"


def test_questions_are_balanced_and_say_the_truth():
    """Half are asked with the converse word; the answer is what the world's own relation score says."""
    world = load_world_preset("configs/dataset_easy.yaml")
    qs = relation_questions(np.random.default_rng(0), world, 60, 168)
    assert len(qs) >= 60  # at least one decisive fact per scene
    assert 0.35 < np.mean([q["truth"] for q in qs]) < 0.65
    assert {q["word"] for q in qs} == {"left_of", "right_of", "above", "below"}
    assert all(q["gap"] is not None and q["gap"] >= 0 for q in qs)
    # the first scene again, from the same stream: every question's answer is the world's own verdict
    from data_pipeline.world import decisive_facts, sample_scene

    scene, m = sample_scene(np.random.default_rng(0), world)
    n_first = len(decisive_facts(scene, m, world))
    for q in qs[:n_first]:
        s_idx, o_idx = q["pair"]
        assert q["truth"] == (relation_score(m, s_idx, q["word"], o_idx, world.margins) >= 1)
        assert q["truth"] or relation_score(m, s_idx, CONVERSE[q["word"]], o_idx, world.margins) >= 1
        assert f"the {scene.objects[s_idx].colour} {scene.objects[s_idx].shape} " in q["text"]


def test_job_on_the_shipped_backbone(tmp_path, one_torch_thread):
    from jobs.eval_backbone import main

    out = tmp_path / "eval.json"
    assert main(["--model", SHIPPED, "--scenes", "8", "--pairs", "4", "--seed", "3", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("question_accuracy", "by_relation", "by_gap", "n_questions", "match_accuracy", "pair_accuracy",
                "grounding"):
        assert key in r, key
    assert sum(v["n"] for v in r["by_relation"].values()) == r["n_questions"]
    assert sum(v["n"] for v in r["by_gap"].values()) == r["n_questions"]  # the easy world is all positional
    weighted = sum(v["accuracy"] * v["n"] for v in r["by_relation"].values()) / r["n_questions"]
    assert weighted == pytest.approx(r["question_accuracy"])
    assert r["n_pairs"] == 4 and 0 <= r["pair_accuracy"] <= 1
    assert r["grounding"]["token_colour_accuracy"] > 0.9  # the shipped backbone binds colours (RECIPE.md)


def test_folder_errors(tmp_path, capsys):
    from jobs.eval_backbone import main

    with pytest.raises(ConfigError, match="no config.json"):
        check_backbone_folder(str(tmp_path))
    with pytest.raises(ConfigError, match="not a Qwen2.5-VL"):
        check_backbone_folder("assets/tiny-pretrained/flux/transformer")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_backbone_folder(str(tmp_path))
    assert main(["--model", "assets/tiny-pretrained/flux/vae"]) == 2
    assert "not a Qwen2.5-VL" in capsys.readouterr().err
    assert main(["--model", SHIPPED, "--world", "configs/nope.yaml"]) == 2
