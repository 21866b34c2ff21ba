"""jobs.pretrain_backbone and the shipped tiny-pretrained backbone (unit tier, CPU, no Ray).

- the job runs a few steps of a micro config and saves a folder that stock `from_pretrained` loads;
- `--dry-run` prints the resolved config and writes nothing; a bad value stops with a ConfigError naming it;
- the per-image-token targets and the training texts are what the module says, checked by hand;
- the shipped assets/tiny-pretrained/qwen2_5_vl loads through the loader (model, processor, SpatialRewardModel)
  and grounds fresh scenes far better than chance (thresholds measured on the shipped checkpoint).
The full reward_cpu recipe on this backbone is a `slow` test in tests/test_reward_cpu.py.

Run: .venv/bin/python -m pytest tests/test_pretrain_backbone.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.pretrain_backbone import main
from spatialrl.standins.backbone import (
    PATCH_WORDS,
    ExampleEncoder,
    PretrainConfig,
    eval_examples,
    evaluate,
    patch_targets,
)
from spatialrl.config import ConfigError, load_config

MICRO = [
    "--set", "model.image_size=56", "--set", "model.hidden_size=32", "--set", "model.num_layers=1",
    "--set", "model.num_heads=2", "--set", "model.num_kv_heads=1", "--set", "model.intermediate_size=64",
    "--set", "model.mrope_section=[2,3,3]", "--set", "data.relation_loss_weight=0.5",
    "--set", "data.position_loss_weight=0.5", "--set", "data.position_loss_layer=1",
    "--set", "data.relation_loss_layers=[1,1]", "--set", "data.question_style=which",
    "--set", "model.vision_hidden_size=16", "--set", "model.vision_heads=2", "--set", "model.vision_depth=1",
    "--set", "model.vision_intermediate_size=32", "--set", "steps=3", "--set", "batch_size=2",
    "--set", "eval_every=3", "--set", "eval_scenes=2", "--set", "log_every=1", "--set", "warmup_steps=1",
]


def test_job_runs_a_micro_config_and_saves_a_loadable_model(tmp_path, one_torch_thread, capsys):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spatialrl.models.loader import load_vl_processor

    out = tmp_path / "bb"
    assert main(["--config", "configs/backbone_tiny.yaml", "--out", str(out), *MICRO]) == 0
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    assert model.config.text_config.hidden_size == 32 and model.dtype == torch.float16  # stored as float16
    processor = load_vl_processor(out)
    assert processor.image_processor.size["longest_edge"] == 56 * 56
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/text" in r] == [1, 2, 3]
    losses = [r for r in rows if "loss/text" in r]
    assert all(np.isfinite(r[k]) for r in losses for k in ("loss/text", "loss/patch", "loss/relation", "loss/position"))
    assert "eval/default/qa_accuracy" in json.loads((out / "eval.json").read_text())
    assert not (out / "resume").exists()  # the resumable state is removed once the run has finished
    assert "done in" in capsys.readouterr().out

    # init_from continues from the saved model: its first step starts from the trained weights, not random ones
    again = tmp_path / "again"
    assert main(["--config", "configs/backbone_tiny.yaml", "--out", str(again), *MICRO, "--set", "steps=1",
                 "--set", "lr=1e-9", "--set", f"init_from={out}"]) == 0
    fresh = tmp_path / "fresh"
    assert main(["--config", "configs/backbone_tiny.yaml", "--out", str(fresh), *MICRO, "--set", "steps=1",
                 "--set", "lr=1e-9"]) == 0
    first = {d.name: [json.loads(x) for x in (d / "training_log.jsonl").read_text().splitlines()][0]["loss/text"]
             for d in (again, fresh)}
    assert first["again"] < first["fresh"], first  # 3 steps at lr 1e-3 already lowered the text loss
    with pytest.raises(ConfigError, match="init_from"):
        load_config(PretrainConfig, "configs/backbone_tiny.yaml", [f"init_from={tmp_path / 'nowhere'}"])


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--out", str(out), "--set", "steps=7", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "steps: 7" in text and "image_size: 168" in text and str(out) in text
    assert not out.exists()


@pytest.mark.parametrize("override, key", [
    ("model.image_size=100", "model.image_size"),
    ("data.easy_fraction=1.5", "data.easy_fraction"),
    ("model.mrope_section=[2,2,2]", "model.mrope_section"),
    ("model.no_such_key=1", "model.no_such_key"),
    ("data.relation_loss_layers=[1,9]", "data.relation_loss_layers"),
])
def test_bad_config_values_raise_a_config_error_naming_the_key(override, key, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PretrainConfig, "configs/backbone_tiny.yaml", [override])
    assert main(["--out", "/tmp/unused", "--set", override]) == 2
    assert key in capsys.readouterr().err


def test_patch_targets_by_hand():
    """A 56 px canvas, one red square filling the top-left 28x28 block exactly, and half of the next one."""
    from data_pipeline.world import Background, Obj, Scene

    background = Background("solid", ("white", "white"), 0, (0.5, 0.5))
    scene = Scene(56, [Obj("red", "square", "large", 28, 14, 14)], background, [0], set())
    labels = np.zeros((56, 56), dtype=np.uint8)
    labels[0:28, 0:28] = 1
    labels[28:56, 28:42] = 1
    t = patch_targets(scene, labels, 56)  # 2x2 tokens, raster order
    red, square, bg = PATCH_WORDS.index("red"), PATCH_WORDS.index("square"), PATCH_WORDS.index("background")
    np.testing.assert_allclose(t[:, red], [0.5, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(t[:, square], [0.5, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(t[:, bg], [0.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(t.sum(1), 1.0)


# ---------------------------------------------------------------------------------------- shipped backbone


@pytest.fixture(scope="module")
def shipped():
    from spatialrl.models.loader import load_vl_model, load_vl_processor

    return load_vl_model("tiny-pretrained"), load_vl_processor("tiny-pretrained")


def test_shipped_backbone_loads_in_float32_with_its_processor(shipped):
    model, processor = shipped
    assert model.dtype == torch.float32
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    size = int(processor.image_processor.size["longest_edge"] ** 0.5)
    assert size % 28 == 0
    for word in ("red", "circle", "left", "above", "bigger", "front", "behind"):
        assert len(processor.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]) == 1


def median_guess_mae(examples, kind: str) -> float:
    """Chance level for a coordinate: the mean error of always answering the median true value."""
    values = np.array([int(text) for ex in examples for k, text in zip(ex.kinds, [t for t, tr in ex.segments if tr])
                       if k == kind])
    return float(np.abs(values - np.median(values)).mean())


def test_shipped_backbone_grounds_fresh_scenes_better_than_chance(shipped, one_torch_thread):
    """48 scenes per world from a seed never used in pretraining; teacher-forced answers (nothing is sampled).

    Measured on the shipped checkpoint (seeds 4242, 5, 6; RECIPE.md): default world shape 0.93-0.94, size error
    0.9-1.0 (median guess 3.7-3.9), y error 17-20 (guess 21-22), x error 25-26 (= chance: not learned); easy
    world shape 1.0, x error 9-13 and y error 4-8 (guess 19-21). The thresholds leave room for that spread.
    """
    model, processor = shipped
    encoder = ExampleEncoder(processor)
    cfg = PretrainConfig()
    default = eval_examples(cfg, encoder, cfg.data.world_preset, 48, seed=4242, world_name="default")
    easy = eval_examples(cfg, encoder, cfg.data.easy_world_preset, 48, seed=4242, world_name="easy")
    m, e = evaluate(model, encoder, default), evaluate(model, encoder, easy)
    assert m["shape_accuracy"] > 0.85 and e["shape_accuracy"] > 0.95  # chance 0.25: colour -> shape binding
    assert m["size_mae"] < 0.5 * median_guess_mae(default, "size")
    assert e["x_mae"] < 0.8 * median_guess_mae(easy, "x")
    assert e["y_mae"] < 0.6 * median_guess_mae(easy, "y")
    assert m["y_mae"] < median_guess_mae(default, "y")


def test_reward_model_builds_on_the_shipped_backbone(shipped):
    from data_pipeline.pairs import make_pair
    from data_pipeline.world import WorldConfig
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel
    from spatialrl.reward.scorer import SpatialScorer
    from data_pipeline.dataset_io import decode_image

    _, processor = shipped
    size = int(processor.image_processor.size["longest_edge"] ** 0.5)
    model = SpatialRewardModel(RewardModelConfig(backbone="tiny-pretrained", image_size=size, lora_rank=4))
    assert model.lora_module_names() and all("language_model" in n for n in model.lora_module_names())
    from spatialrl.reward.prompt import load_processor

    scorer = SpatialScorer(model, load_processor("tiny-pretrained", size), device="cpu")
    pair = make_pair(0, 0, "test", WorldConfig())
    images = [decode_image(pair["chosen_image"]), decode_image(pair["rejected_image"])]
    scores = scorer.score([pair["prompt"]] * 2, images)
    assert scores.shape == (2,) and np.isfinite(scores).all() and scores[0] != scores[1]


def test_word_set_loss_reads_through_a_readout_when_given():
    """The bare logit lens vs a per-set read-out: an identity read-out changes nothing; a trained one gets the
    gradient (so several sets at one hidden state need not share one distribution)."""
    from types import SimpleNamespace

    import torch

    from spatialrl.standins.backbone import word_set_loss

    torch.manual_seed(0)
    hidden_size, vocab = 8, 11
    model = SimpleNamespace(config=SimpleNamespace(image_token_id=7), lm_head=torch.nn.Linear(hidden_size, vocab),
                            model=SimpleNamespace(language_model=SimpleNamespace(norm=torch.nn.LayerNorm(hidden_size))))
    batch = {"input_ids": torch.tensor([[1, 7, 7, 2], [7, 3, 7, 4]])}  # two image tokens per row
    hidden = torch.randn(2, 4, hidden_size)
    target = torch.zeros(2, 2, 3)
    target[0, 0, 1] = target[1, 1, 2] = 1.0
    target[0, 1, :2] = 0.5  # a soft set; token [1, 0] keeps an empty one: skipped
    words = torch.tensor([0, 5, 9])
    bare = word_set_loss(model, batch, hidden, target, words)
    identity = torch.nn.Linear(hidden_size, hidden_size)
    torch.nn.init.eye_(identity.weight)
    torch.nn.init.zeros_(identity.bias)
    assert torch.allclose(word_set_loss(model, batch, hidden, target, words, identity), bare)
    # by hand: the mean over the three non-empty tokens of -sum target * log softmax(lens)[words]
    logp = torch.log_softmax(model.lm_head(model.model.language_model.norm(hidden)), -1)[..., words]
    h_tokens = [(0, 1, 0), (0, 2, 1), (1, 2, 1)]  # (row, position, image-token index)
    expected = -sum((target[b, t] * logp[b, pos]).sum() for b, pos, t in h_tokens) / 3
    assert torch.allclose(bare, expected)
    other = torch.nn.Linear(hidden_size, hidden_size)
    loss = word_set_loss(model, batch, hidden, target, words, other)
    loss.backward()
    assert not torch.allclose(loss, bare) and other.weight.grad.abs().sum() > 0


def test_curriculum_recipe_chains_stages_and_continues_a_stopped_run(tmp_path, capsys):
    # Two one-step stages of the relation curriculum through the job: each saves a model folder that the next starts
    # from; a second call reuses both; a later stage alone needs the earlier folder or --init; bad names are errors.
    from transformers import Qwen2_5_VLForConditionalGeneration

    from jobs.pretrain_backbone import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("common: [--max-steps, '1', --eval-scenes, '4', --eval-every, '1', --batch, '2']\n"
                    "stages:\n  a: [--relations, left_of]\n  b: [--relations, 'left_of,above', --seed, '1']\n")
    out = tmp_path / "cur"
    assert main(["--recipe", "curriculum", "--plan", str(plan), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== a:" in text and "== b:" in text and f"--init {out / 'a'}" in text
    for stage in ("a", "b"):
        assert "step     1 loss" in (out / f"{stage}.log").read_text()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "b")
    assert model.config.text_config.num_hidden_layers == 6  # the shipped 4 layers grown by the first stage
    assert main(["--recipe", "curriculum", "--plan", str(plan), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing") == 2

    fresh = tmp_path / "fresh"
    assert main(["--recipe", "curriculum", "--plan", str(plan), "--out", str(fresh), "--stages", "b"]) == 2
    assert "--init" in capsys.readouterr().err
    assert main(["--recipe", "curriculum", "--plan", str(plan), "--out", str(fresh), "--stages", "b",
                 "--init", str(out / "a")]) == 0
    assert (fresh / "b" / "config.json").is_file() and not (fresh / "a").exists()
    assert main(["--recipe", "curriculum", "--plan", str(plan), "--out", str(fresh), "--stages", "zz"]) == 2
    assert "unknown curriculum stage" in capsys.readouterr().err
    assert main(["--recipe", "curriculum", "--plan", str(tmp_path / "none.yaml"), "--out", str(fresh)]) == 2


def test_the_shipped_curriculum_plan_parses_and_names_the_resume_points():
    from spatialrl.standins.curriculum import load_plan

    plan = load_plan("configs/backbone_curriculum.yaml")
    assert list(plan["stages"]) == ["s1", "s2", "s3", "s4", "s5", "s5m", "s5o", "s6", "s7"]
    shipped = Path(__file__).resolve().parents[1] / "assets" / "tiny-pretrained" / "qwen2_5_vl_curriculum"
    assert (shipped / "s5m_missing_objects" / "config.json").is_file()
    assert (shipped / "s5o_shape_lookup" / "config.json").is_file()


def test_relation_targets_size_sets_by_hand():
    # A big red square on the left, a small blue one on the right (168 px = 6 x 6 image tokens of 28 px): the red
    # tokens' sets are right-of {blue}, below {}, left-of {}, above {}, smaller-than {blue}, bigger-than {}; the blue
    # tokens' the converses. "background" marks an empty set; tokens no object dominates get no target.
    from data_pipeline.relations import measure
    from data_pipeline.world import Background, Obj, Scene, load_world_preset, render_labels
    from spatialrl.standins.backbone import RELATION_SETS, RELATION_WORDS, relation_targets

    world = load_world_preset("configs/dataset_default.yaml")
    scene = Scene(168, [Obj("red", "square", "large", 56, 42, 84), Obj("blue", "square", "small", 28, 126, 84)],
                  Background("solid", ("white", "white"), 0.0, (0.5, 0.5)), [0, 1], set())
    labels = render_labels(scene)
    m = measure(labels, 2)
    t = relation_targets(scene, m, labels, 168, world, n_sets=6)
    assert t.shape == (36, 6, len(RELATION_WORDS)) and RELATION_SETS[4:6] == ("smaller_than", "bigger_than")
    red, blue, bg = RELATION_WORDS.index("red"), RELATION_WORDS.index("blue"), len(RELATION_WORDS) - 1
    red_token, blue_token = 2 * 6 + 1, 3 * 6 + 4  # row 2 col 1 inside the red square; row 3 col 4 inside the blue
    assert [int(t[red_token, r].argmax()) for r in range(6)] == [blue, bg, bg, bg, blue, bg]
    assert [int(t[blue_token, r].argmax()) for r in range(6)] == [bg, bg, red, bg, bg, red]
    assert t[0].sum() == 0  # the top-left corner token is background: no loss
    assert np.array_equal(relation_targets(scene, m, labels, 168, world)[:, :4], t[:, :4])  # 4 sets: the same first 4
