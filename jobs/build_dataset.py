"""Build the SpatialReward-Dataset: preference pairs as Parquet shards, with Ray Data doing the work in parallel.

Paper: ~80k pairs of (long prompt, perfect image, image violating 1 or 2-3 relations), prompts and perturbations
written by an LLM, images by several T2I models, filtered by experts. Here the spatial world generates them
with exact labels (see data_pipeline/world.py); `--import` converts external pairs into the same format. The dataset is built in a hidden staging folder next to
--out and renamed into place when complete: a failed or killed build leaves no half dataset, and `--overwrite`
keeps the old one until the new one exists.

    python -m jobs.build_dataset --pairs 80000 --seed 0 --out runs/dataset            # the paper-sized default
    python -m jobs.build_dataset --config configs/dataset_easy.yaml --pairs 2000 --out runs/easy
    python -m jobs.build_dataset --import pairs.jsonl --images-root imgs/ --out runs/imported [--on-bad-row skip]
    python -m jobs.build_dataset --set world.max_objects=6 --dry-run
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_pipeline.world import WorldConfig
from spatialrl.config import ConfigError, add_config_args, job_config, to_dict


@dataclass
class BuildDatasetConfig:
    pairs: int = 80000
    seed: int = 0
    out: str = "runs/dataset"
    overwrite: bool = False
    splits: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train / val / test
    pairs_per_block: int = 250  # one Ray Data task makes this many pairs
    preview_pairs: int = 6
    world: WorldConfig = field(default_factory=WorldConfig)
    # --import mode
    import_file: str | None = None
    images_root: str | None = None
    on_bad_row: Literal["error", "skip"] = "error"
    num_cpus: int | None = None  # local Ray only; None = all cores
    address: str | None = None  # join an existing cluster (default: RAY_ADDRESS or start a local one)

    def validate(self) -> None:
        if self.pairs < 1:
            raise ConfigError("pairs must be >= 1")
        if len(self.splits) != 3 or any(f < 0 for f in self.splits) or abs(sum(self.splits) - 1) > 1e-6:
            raise ConfigError(f"splits={self.splits}: give three non-negative fractions (train, val, test) summing to 1")
        if self.pairs_per_block < 1:
            raise ConfigError("pairs_per_block must be >= 1")
        if self.import_file is not None and self.images_root is None:
            raise ConfigError("--import needs --images-root DIR (image paths in the file are relative to it)")


def split_sizes(n: int, fractions: list[float]) -> dict[str, int]:
    """Exact split sizes summing to n (val and test rounded, train takes the rest)."""
    val = int(round(n * fractions[1]))
    test = int(round(n * fractions[2]))
    return {"train": n - val - test, "val": val, "test": test}


def generate(cfg: BuildDatasetConfig, out: Path) -> None:
    """One Ray Data pipeline per split: ids -> pairs (parallel map_batches tasks) -> Parquet shards."""
    import ray

    from cluster.runtime import cpu_bound_data_context
    from data_pipeline.dataset_io import write_split
    from data_pipeline.pairs import make_pairs_batch

    cpu_bound_data_context()
    for split, n in split_sizes(cfg.pairs, cfg.splits).items():
        if n == 0:
            continue
        blocks = max(1, math.ceil(n / cfg.pairs_per_block))
        ds = ray.data.range(n, override_num_blocks=blocks).map_batches(
            make_pairs_batch,
            fn_kwargs={"seed": cfg.seed, "split": split, "cfg": cfg.world},
            batch_size=cfg.pairs_per_block,
            num_cpus=1,
        )
        write_split(ds, out / split, cfg.pairs_per_block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out")
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--import", dest="import_file", help="JSONL or CSV of external pairs")
    parser.add_argument("--images-root", help="folder the image paths in --import are relative to")
    parser.add_argument("--on-bad-row", choices=["error", "skip"])
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    args = parser.parse_args(argv)
    cfg = job_config(BuildDatasetConfig, args, {
        "pairs": args.pairs, "seed": args.seed, "out": args.out, "overwrite": args.overwrite,
        "import_file": args.import_file, "images_root": args.images_root, "on_bad_row": args.on_bad_row,
        "num_cpus": args.num_cpus, "address": args.address,
    })
    if isinstance(cfg, int):
        return cfg

    from data_pipeline import dataset_io

    out = Path(cfg.out)
    try:
        stage = dataset_io.staging_out_dir(out, cfg.overwrite)  # --overwrite keeps `out` until the new one is done
    except dataset_io.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        rc = build_into(cfg, stage)
        if rc:
            return rc
        dataset_io.publish_out_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when published
    manifest = dataset_io.check_dataset(out)
    preview = out / "preview.png"
    total = sum(c["pairs"] for c in manifest["counts"].values())
    print(f"wrote {total} pairs to {out} in {manifest['build_seconds']} s")
    for split, c in manifest["counts"].items():
        print(f"  {split:5s} {c['pairs']:7d} pairs  by perturbations: {c['by_perturbations']}")
    if preview.exists():
        print(f"  preview: {preview}")
    return 0


def build_into(cfg: BuildDatasetConfig, out: Path) -> int:
    """Generate or import the whole dataset into the (staging) folder `out`; 0, or the exit code of an error."""
    from cluster.runtime import ray_session
    from data_pipeline import dataset_io

    t0 = time.time()
    with ray_session(cfg.address, cfg.num_cpus):
        if cfg.import_file:
            from data_pipeline.importer import BadRowsError, import_pairs

            try:
                info = import_pairs(
                    Path(cfg.import_file), Path(cfg.images_root), out, on_bad_row=cfg.on_bad_row,
                    seed=cfg.seed, splits=cfg.splits,
                )
            except BadRowsError as exc:
                print(f"import error: {exc}", file=sys.stderr)
                return 1
        else:
            generate(cfg, out)
            info = {"source": "spatial_world", "seed": cfg.seed, "world": to_dict(cfg.world)}
        log_build_metrics(out, Path(cfg.out).name, time.time() - t0)  # while Ray is up: the gauges reach it
    dataset_io.write_prompts_jsonl(out)
    info["build_seconds"] = round(time.time() - t0, 1)
    info["config"] = to_dict(cfg)
    dataset_io.write_manifest(out, info)
    dataset_io.write_preview(out, cfg.preview_pairs)
    return 0


def log_build_metrics(out: Path, name: str, seconds: float) -> None:
    """The build's numbers through the one metrics path: OUT/metrics.jsonl and the spatialrl_dataset_* gauges."""
    import pyarrow.parquet as pq

    from spatialrl.metrics import MetricsLogger

    pairs = sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))
    MetricsLogger(out / "metrics.jsonl", run=f"build_dataset/{name}").log(
        0, {"dataset/pairs": pairs, "dataset/build_s": seconds, "dataset/pairs_per_s": pairs / max(seconds, 1e-9)})


if __name__ == "__main__":
    sys.exit(main())
