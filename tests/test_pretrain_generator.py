"""jobs.pretrain_generator and the shipped toy generator (assets/tiny-pretrained/flux). Unit tier: no Ray."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialrl.config import ConfigError, load_config
from spatialrl.standins.generator import (
    GeneratorPretrainConfig,
    TransformerConfig,
    build_t5_tokenizer,
    load_world_preset,
    sample_sigmas,
    world_corpus,
)

TOY = "configs/generator_toy.yaml"
# Every stage, a few steps each, on a handful of images: the same code path as the shipped recipe.
MICRO = [
    "data.num_images=12", "data.eval_images=2", "text.max_sequence_length=32",
    "vae.block_out_channels=[8,8,8]", "vae.steps=2", "vae.batch_size=4", "vae.min_presence=0",
    "transformer.num_layers=1", "transformer.num_single_layers=1", "transformer.attention_head_dim=16",
    "transformer.num_attention_heads=2", "transformer.axes_dims_rope=[4,6,6]", "transformer.steps=2",
    "transformer.batch_size=4", "transformer.warmup_steps=1", "sample_check.prompts=1", "sample_check.num_steps=1",
    "sample_check.noise_levels=[0.7]", "log_every=1",
]


def _sets(overrides):
    return [arg for kv in overrides for arg in ("--set", kv)]


def test_dry_run_prints_the_resolved_config(capsys):
    from jobs.pretrain_generator import main

    assert main(["--config", TOY, "--out", "/nonexistent/never-written", "--dry-run",
                 "--set", "transformer.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "max_sequence_length: 96" in out and "world_preset: configs/dataset_easy.yaml" in out


@pytest.mark.parametrize("override, key", [
    ("transformer.axes_dims_rope=[8,8,8]", "axes_dims_rope"),  # does not sum to attention_head_dim
    ("vae.block_out_channels=[12,16]", "block_out_channels"),  # not a multiple of norm_num_groups
    ("data.world_preset=configs/nope.yaml", "world_preset"),
    ("save_dtype=int8", "save_dtype"),
    ("transformer.lr=fast", "transformer.lr"),
    ("transformer.cond_dropout=1.0", "cond_dropout"),
    ("init_from=configs", "init_from"),  # not a FluxPipeline folder
    ("text.role_loss=1", "t5_lr"),  # the role loss trains the T5: needs a T5 learning rate
    ("text.t5_lr=-1", "t5_lr"),
])
def test_bad_config_values_are_config_errors(override, key, capsys):
    with pytest.raises(ConfigError, match=key):
        load_config(GeneratorPretrainConfig, TOY, [override])
    from jobs.pretrain_generator import main

    assert main(["--config", TOY, "--dry-run", "--set", override]) == 2
    assert "config error" in capsys.readouterr().err


def test_training_times_follow_the_samplers_shift():
    # t = e^mu / (e^mu + 1/s - 1) with s = sigmoid(logit_mean) when logit_std -> 0: s = 0.5, e^mu = 2 gives 2/3.
    cfg = TransformerConfig(logit_mean=0.0, logit_std=1e-9)
    t = sample_sigmas(4, cfg, math.log(2.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, torch.full((4,), 2 / 3), rtol=0, atol=1e-6)
    wide = sample_sigmas(10000, TransformerConfig(), 0.4675, torch.Generator().manual_seed(0))
    assert 0 < float(wide.min()) and float(wide.max()) < 1 and 0.55 < float(wide.mean()) < 0.62  # shifted up from 0.5


def test_t5_tokenizer_has_every_prompt_word_as_one_token():
    from data_pipeline.pairs import make_pair

    tok = build_t5_tokenizer(world_corpus())
    world = load_world_preset("configs/dataset_easy.yaml")
    prompts = [make_pair(i, 0, "test", world)["prompt"] for i in range(60)]
    char_pieces = {p for p in tok.get_vocab() if len(p.lstrip("\u2581")) == 1 and p.lstrip("\u2581").isalpha()}
    for prompt in prompts:
        pieces = tok.tokenize(prompt)
        assert not [p for p in pieces if p in char_pieces and p not in ("\u2581a", "\u2581A")], prompt
    lengths = [len(tok(p).input_ids) for p in prompts]
    assert max(lengths) <= 96  # text.max_sequence_length of the toy preset


def test_micro_run_saves_a_pipeline_that_diffusers_loads(tmp_path, one_torch_thread, capsys):
    from diffusers import FluxPipeline

    from jobs.pretrain_generator import main

    out = tmp_path / "gen"
    out.mkdir()
    (out / "RECIPE.md").write_text("kept")
    assert main(["--config", TOY, "--out", str(out), *_sets(MICRO)]) == 0
    assert (out / "RECIPE.md").read_text() == "kept"
    stages = [json.loads(line)["stage"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    for stage in ("data", "vae", "vae_check", "encode", "transformer", "saved", "sample_check"):
        assert stage in stages
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["vae_recon"]) >= {"object_presence", "relation_accuracy"}

    pipe = FluxPipeline.from_pretrained(out)
    assert pipe.vae_scale_factor == 4 and pipe.transformer.dtype == torch.float32
    assert pipe.transformer.config.guidance_embeds and pipe.scheduler.config.use_dynamic_shifting
    assert pipe.vae.config.scaling_factor != 1.0  # the fitted normalisation is in the config
    image = pipe("a red circle to the left of a blue square", height=64, width=64, num_inference_steps=2,
                 max_sequence_length=32, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()

    # A second run into the same folder must not silently mix two generators.
    assert main(["--config", TOY, "--out", str(out), *_sets(MICRO)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # Continuing from it keeps its VAE (weights and latent factors) and text encoders, and starts the
    # transformer from its weights; the vae settings of the config are not used (no VAE training stage).
    cont = tmp_path / "cont"
    assert main(["--config", TOY, "--out", str(cont), *_sets(MICRO), "--set", f"init_from={out}",
                 "--set", "transformer.lr=1e-12"]) == 0
    stages = [json.loads(line)["stage"] for line in (cont / "training_log.jsonl").read_text().splitlines()]
    assert "init_from" in stages and "vae" not in stages
    again = FluxPipeline.from_pretrained(cont)
    for name in ("vae", "text_encoder_2", "transformer"):
        before, after = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        for key in before:  # lr 1e-12: the continued transformer is still the one it started from
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-3 if name == "transformer" else 0)
    assert again.vae.config.scaling_factor == pipe.vae.config.scaling_factor
    assert again.vae.config.shift_factor == pipe.vae.config.shift_factor
    for part in ("vae", "transformer"):  # no trace of the folder it started from
        assert "_name_or_path" not in json.loads((cont / part / "config.json").read_text())


def test_role_targets_by_hand():
    # "the red circle is left of the blue square. the green box is below the red circle.": red is left (0) on x
    # and above (0) on y, blue is right (1), green is below (1); no stated side -> -1. Mentions: each colour
    # token and the token after it, weighted 1/count (red is named twice: 4 tokens of 1/4).
    from spatialrl.standins.generator import role_targets, t5_token_ids

    tok = build_t5_tokenizer(world_corpus())
    prompt = "the red circle is left of the blue square. the green box is below the red circle."
    structured = [{"objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"},
                               {"colour": "green", "shape": "square"}],
                   "relations": [{"subject": 0, "type": "left_of", "object": 1},
                                 {"subject": 2, "type": "below", "object": 0}]}]
    ids = t5_token_ids(tok, [prompt], 32)
    mentions, labels = role_targets(tok, ids, structured, max_objects=4)
    assert labels[0].tolist() == [[0, 0], [1, -1], [-1, 1], [-1, -1]]
    pieces = tok.convert_ids_to_tokens(ids[0].tolist())
    red = [i for i, w in enumerate(pieces) if (mentions[0, 0, i] > 0)]
    assert [pieces[i] for i in red] == ["\u2581red", "\u2581circle"] * 2 and torch.allclose(mentions[0, 0, red], torch.tensor(0.25))
    assert float(mentions[0, 3].sum()) == 0 and torch.allclose(mentions[0, :3].sum(-1), torch.ones(3))
    # an object whose colour is never in the tokens gets no target, even with a stated side
    cut = t5_token_ids(tok, [prompt], 4)  # "the red circle </s>": blue and green cut off
    _, lab = role_targets(tok, cut, structured, max_objects=4)
    assert lab[0, 1].tolist() == [-1, -1] and lab[0, 0].tolist() == [0, 0]


def test_linear_probe_reads_a_planted_side_and_not_noise():
    from spatialrl.standins.generator import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(800, 16, generator=g), torch.randint(0, 2, (800,), generator=g)
    planted = x.clone()
    planted[:, 3] += 3 * (2 * y - 1)
    assert linear_probe_accuracy(planted[:600], y[:600], planted[600:], y[600:]) > 0.95
    assert abs(linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:]) - 0.5) < 0.12


def test_micro_run_trains_the_t5_with_the_role_loss(tmp_path, one_torch_thread):
    from transformers import T5EncoderModel

    from jobs.pretrain_generator import main

    out = tmp_path / "gen"
    assert main(["--config", TOY, "--out", str(out), *_sets(MICRO), "--set", "transformer.steps=3",
                 "--set", "text.t5_lr=1e-2", "--set", "text.role_loss=1", "--set", "transformer.ema_decay=0"]) == 0
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if e["stage"] == "transformer"]
    assert len(steps) == 3 and all("loss/role" in e and 0 <= e["role_accuracy"] <= 1 for e in steps)
    probe = json.loads((out / "summary.json").read_text())["role_probe"]
    assert 0 <= probe["horizontal"] <= 1 and probe["horizontal_n"] >= 0
    # the saved T5 is the trained one: the same seed's frozen T5 (a run without the T5 learning rate) differs
    frozen = tmp_path / "frozen"
    assert main(["--config", TOY, "--out", str(frozen), *_sets(MICRO), "--set", "transformer.steps=3",
                 "--set", "transformer.ema_decay=0"]) == 0
    a = T5EncoderModel.from_pretrained(out / "text_encoder_2").state_dict()
    b = T5EncoderModel.from_pretrained(frozen / "text_encoder_2").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tiny-pretrained" / "flux"


# Skipped only in a checkout without the shipped generator.
@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="assets/tiny-pretrained/flux not shipped")
def test_shipped_generator_loads_and_draws_64px_images(one_torch_thread):
    from spatialrl.models.loader import load_flux_pipeline

    pipe = load_flux_pipeline("tiny-pretrained")
    assert pipe.vae_scale_factor in (4, 8) and pipe.transformer.config.guidance_embeds
    assert sum(p.numel() for p in pipe.transformer.parameters()) <= 2_000_000
    assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())  # float16 on disk, float32 here
    image = pipe("A flat illustration on a plain white background showing a red circle and a blue square. "
                 "The red circle is to the left of the blue square.", height=64, width=64, num_inference_steps=4,
                 max_sequence_length=96, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05  # a picture, not a flat field


def test_verifier_scores_tell_a_wrong_shape_from_a_missing_colour():
    from PIL import Image, ImageDraw

    from data_pipeline.world import PALETTE, draw_shape
    from spatialrl.standins.generator import verifier_scores

    img = Image.new("RGB", (64, 64), (205, 205, 205))
    draw = ImageDraw.Draw(img)
    draw_shape(draw, "square", 16, 32, 18, PALETTE["red"])  # red is there, but as a square, not the named circle
    draw_shape(draw, "triangle", 48, 32, 18, PALETTE["green"])  # right colour and shape; blue is missing
    objects = [{"colour": "red", "shape": "circle"}, {"colour": "green", "shape": "triangle"},
               {"colour": "blue", "shape": "square"}]
    relations = [{"subject": 1, "type": "right_of", "object": 0}]
    scores = verifier_scores(np.asarray(img)[None], [{"objects": objects, "relations": relations}])
    assert scores["object_presence"] == pytest.approx(1 / 3)  # only the green triangle
    assert scores["colour_found"] == pytest.approx(2 / 3)  # red and green are drawn, blue is not
    assert scores["relation_accuracy"] == 1.0 and scores["all_correct"] == 0.0


def test_generator_eval_bench_counts_every_missed_object(tmp_path, one_torch_thread):
    """bench.generator_eval: one row per (model, scale); its misses are exactly the objects not present."""
    from bench import generator_eval

    out = tmp_path / "eval.json"
    results = generator_eval.main([
        "--models", "tiny", "--scales", "1,2", "--prompts", "4", "--steps", "1", "--resolution", "32",
        "--max-sequence-length", "32", "--json", str(out),
    ])
    assert list(results) == ["tiny@cfg1", "tiny@cfg2"] and json.loads(out.read_text())["results"] == results
    num_objects = sum(len(row["objects"]) for row in generator_eval.make_examples(
        generator_eval.load_world_preset("configs/dataset_easy.yaml"), 4, 1, "val").structured)
    for r in results.values():
        assert sum(r["misses"].values()) == round((1 - r["object_presence"]) * num_objects)


def test_sample_settings_share_one_pipeline_and_refuse_another_model(one_torch_thread):
    from spatialrl.flux.sampler import FluxSamplerConfig
    from spatialrl.standins.generator import sample_settings

    base = dict(model="tiny", resolution=32, num_steps=1, group_size=1, batch_size=2, max_sequence_length=32,
                device="cpu")
    configs = [FluxSamplerConfig(**base, true_cfg_scale=s) for s in (1.0, 2.0)]
    out = list(sample_settings(configs, ["a red circle", "a blue square"]))
    assert [c.true_cfg_scale for c, _, _ in out] == [1.0, 2.0]
    assert all(images.shape == (2, 32, 32, 3) for _, images, _ in out)
    assert not np.array_equal(out[0][1], out[1][1])  # the guidance was applied
    with pytest.raises(ValueError, match="every config must load"):
        list(sample_settings([configs[0], FluxSamplerConfig(**{**base, "model": "small"})], ["a red circle"]))

