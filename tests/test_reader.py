"""The streaming reader: per-pair processor outputs collate back into exactly what the processor gives for the
whole batch; the Ray Data pipeline streams every pair of a split (ray tier)."""

import numpy as np
import pytest
import torch

from data_pipeline.dataset_io import decode_image
from data_pipeline.pairs import make_pair
from spatialrl.reward.prompt import encode_pairs, load_processor, reward_text
from spatialrl.reward.reader import PairCollator, ReaderConfig
from data_pipeline.world import WorldConfig


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny", 112)


def pairs(n, seed=0):
    rows = [make_pair(i, seed, "train", WorldConfig()) for i in range(n)]
    return ([r["prompt"] for r in rows], [decode_image(r["chosen_image"]) for r in rows],
            [decode_image(r["rejected_image"]) for r in rows], rows)


def test_collated_batch_equals_the_processor_on_the_whole_batch(processor):
    prompts, chosen, rejected, rows = pairs(4)
    enc = encode_pairs(processor, 112, prompts, chosen, rejected, max_length=640)
    batch = {**enc, "num_perturbations": np.array([r["num_perturbations"] for r in rows])}
    got = PairCollator(padding_side="left")(batch)
    texts = [reward_text(processor, p) for p in prompts]
    want = processor(text=texts + texts, images=[im.resize((112, 112), 2) for im in chosen + rejected],
                     padding=True, return_tensors="pt")
    assert set(want) <= set(got)  # every processor key reaches the model
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert got["input_ids"].shape[0] == 8 and got["num_perturbations"].tolist() == [r["num_perturbations"] for r in rows]


def test_collator_gives_the_same_batch_from_columns_and_from_rows(processor):
    """Ray Data hands the collator fixed-shape columns as arrays; a DataLoader hands it lists of per-pair rows."""
    prompts, chosen, rejected, rows = pairs(3, seed=1)
    columns = {**encode_pairs(processor, 112, prompts, chosen, rejected, max_length=640),
               "num_perturbations": np.array([r["num_perturbations"] for r in rows])}
    as_rows = {key: list(value) for key, value in columns.items()}
    collate = PairCollator(padding_side="left")
    from_columns, from_rows = collate(columns), collate(as_rows)
    assert from_columns.keys() == from_rows.keys()
    for key in from_columns:
        assert torch.equal(from_columns[key], from_rows[key]), key


def test_prompts_are_never_truncated(processor):
    prompts, chosen, rejected, _ = pairs(1)
    with pytest.raises(ValueError, match="raise reader.max_length"):
        encode_pairs(processor, 112, prompts, chosen, rejected, max_length=32)


def test_image_size_must_fit_the_patch_grid():
    from spatialrl.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of 28"):
        ReaderConfig(image_size=100).validate()


@pytest.mark.ray
def test_ray_pipeline_streams_every_pair(ray_local, tmp_path):
    from spatialrl.reward.reader import pair_dataset
    from jobs.build_dataset import main as build
    from spatialrl.models.loader import load_vl_model

    out = tmp_path / "ds"
    assert build(["--pairs", "40", "--out", str(out), "--set", "splits=[0.5, 0.25, 0.25]", "--set", "pairs_per_block=10"]) == 0
    cfg = ReaderConfig(batch_size=8, num_actors=1)
    seen = []
    for batch in pair_dataset(str(out), "train", cfg).iter_torch_batches(batch_size=6, collate_fn=PairCollator.from_config(cfg)):
        b = batch["input_ids"].shape[0] // 2
        assert batch["pixel_values"].shape == (2 * b * 64, 1176)
        assert batch["attention_mask"][:, -1].all()  # left padded: the last column is a real token in every row
        seen.append(b)
    assert sum(seen) == 20
    model = load_vl_model("tiny")
    from transformers import Qwen2_5_VLModel  # noqa: F401  (the backbone class the reward model uses)

    hidden = model.model(**{k: v for k, v in batch.items() if k != "num_perturbations"}).last_hidden_state
    assert hidden.shape[:2] == batch["input_ids"].shape and torch.isfinite(hidden).all()
