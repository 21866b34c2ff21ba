"""Streaming reader for reward-model training: Parquet -> decode -> resize -> Qwen2.5-VL processor inputs.

A Ray Data pipeline that never materialises the dataset: `read_parquet` streams row groups, a pool of
`PairPreprocessor` actors (each loads the processor once) turns pairs into per-pair processor outputs, and
`iter_torch_batches(collate_fn=PairCollator(...))` pads them into model batches with the chosen images first
and the rejected ones second, so one forward pass scores both (docs/architecture.md section 3). Every key the processor
returns travels to the model (dropping `mm_token_type_ids` silently breaks M-RoPE).

    from spatialrl.reward.reader import ReaderConfig, pair_dataset, PairCollator
    ds = pair_dataset("runs/dataset", "train", ReaderConfig(processor="tiny"))
    for batch in ds.iter_torch_batches(batch_size=8, collate_fn=PairCollator.from_config(cfg)):
        batch["input_ids"]  # [2B, L]: rows 0..B-1 chosen, B..2B-1 rejected

Ray Train workers call the same `iter_torch_batches` on `ray.train.get_dataset_shard("train")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from data_pipeline.dataset_io import decode_image, split_dir
from spatialrl.reward.prompt import PIXEL_KEYS, SIDES, encode_pairs, load_processor


@dataclass
class ReaderConfig:
    processor: str = "tiny"  # folder, preset or hub id (spatialrl.models.loader)
    image_size: int = 112  # images are resized to this square before the processor (multiple of 28)
    max_length: int = 640  # tokens per sequence incl. image tokens; longer prompts raise (never truncated)
    batch_size: int = 32  # pairs per preprocessing task
    num_actors: int = 2  # preprocessing actors
    cpus_per_actor: float = 0.5  # logical CPUs: leave room for the Parquet read tasks (a 2-CPU box deadlocks at 1.0)
    read_cpus: float = 0.25  # per Parquet read task (I/O bound)
    # Parquet read tasks at once. One reads ~17k pairs/s from our shards, enough for ~35 preprocessing actors;
    # each extra one starts its own worker process, which on a small node delays the first batch (2 cores:
    # 13.4 s to the first batch with Ray's default, 9.7 s with 1; bench/RESULTS.md).
    read_tasks: int = 1

    def validate(self) -> None:
        from spatialrl.config import ConfigError

        if self.image_size % 28:
            raise ConfigError(f"reader.image_size={self.image_size}: use a multiple of 28 (Qwen2.5-VL patch 14 x merge 2)")
        if self.read_tasks < 1 or self.num_actors < 1:
            raise ConfigError(f"reader.read_tasks={self.read_tasks}, reader.num_actors={self.num_actors}: need at least 1 each")


class PairPreprocessor:
    """Ray Data actor body (also usable as a plain callable): a Parquet batch -> per-pair processor inputs."""

    def __init__(self, processor: str, image_size: int, max_length: int):
        self.processor = load_processor(processor, image_size)
        self.image_size = image_size
        self.max_length = max_length

    def __call__(self, batch: dict) -> dict:
        chosen = [decode_image(b) for b in batch["chosen_image"]]
        rejected = [decode_image(b) for b in batch["rejected_image"]]
        out = encode_pairs(self.processor, self.image_size, list(batch["prompt"]), chosen, rejected, self.max_length)
        npert = batch["num_perturbations"]
        out["num_perturbations"] = np.array([-1 if v is None or v != v else int(v) for v in npert], dtype=np.int64)
        out["pair_id"] = np.asarray(batch["pair_id"]).astype(str)
        return out


def _rows_of_both_sides(columns: list) -> np.ndarray:
    """One array `[2B, ...]` from the chosen and rejected columns, copied once: Ray Data hands over fixed-shape
    columns as arrays `[B, ...]`, a DataLoader hands over lists of per-pair arrays."""
    if all(isinstance(c, np.ndarray) and c.dtype != object for c in columns):
        return np.concatenate(columns)
    return np.stack([row for c in columns for row in c])


@dataclass
class PairCollator(NumpyBatchCollateFn):
    """Stacks per-pair entries into one model batch, chosen rows first, then rejected ([2B, ...]), and trims
    the token columns that are padding in every row."""

    padding_side: str = "left"

    @classmethod
    def from_config(cls, cfg: ReaderConfig) -> "PairCollator":
        proc = load_processor(cfg.processor, cfg.image_size)
        return cls(padding_side=proc.tokenizer.padding_side)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        keys = sorted({k.split("_", 1)[1] for k in batch if k.startswith(SIDES)})
        both = {key: _rows_of_both_sides([batch[f"{side}_{key}"] for side in SIDES]) for key in keys}
        mask = both["attention_mask"].astype(bool)  # [2B, max_length]
        real = mask.any(axis=0)  # columns that hold a token in some row
        # with left padding the real tokens are the right-most columns; keep just enough of them
        keep = slice(int(np.argmax(real)), None) if self.padding_side == "left" else slice(0, int(real.nonzero()[0][-1]) + 1)
        width = mask.shape[1]
        out: dict[str, torch.Tensor] = {}
        for key, value in both.items():
            if key in PIXEL_KEYS:
                out[key] = torch.from_numpy(value.reshape(-1, value.shape[-1]))  # [2B * P, D]
            elif value.ndim == 2 and value.shape[1] == width:
                out[key] = torch.from_numpy(np.ascontiguousarray(value[:, keep]))  # [2B, L]
            else:
                out[key] = torch.from_numpy(value)
        out["num_perturbations"] = torch.tensor(np.asarray(batch["num_perturbations"]), dtype=torch.long)
        return out


READ_COLUMNS = ["pair_id", "prompt", "chosen_image", "rejected_image", "num_perturbations"]


def pair_dataset(data_dir: str, split: str, cfg: ReaderConfig):
    """The streaming Ray Dataset of processed pairs for one split (lazy: nothing runs until iterated)."""
    import ray

    path = split_dir(data_dir, split)
    if not path.is_dir():
        from data_pipeline.dataset_io import DatasetError

        raise DatasetError(f"{path} does not exist: is {data_dir} a dataset with a {split!r} split?")
    ds = ray.data.read_parquet(str(path), columns=READ_COLUMNS, num_cpus=cfg.read_cpus, concurrency=cfg.read_tasks)
    return ds.map_batches(
        PairPreprocessor,
        fn_constructor_kwargs={"processor": cfg.processor, "image_size": cfg.image_size, "max_length": cfg.max_length},
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
    )
