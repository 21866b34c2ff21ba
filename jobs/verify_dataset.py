"""Check a SpatialReward dataset with the verifier: do chosen images satisfy every relation, and do rejected
images break exactly the recorded ones?

The paper has experts filter its pairs; we have an exact verifier that reads only pixels (data_pipeline/verifier.py).
Runs as parallel Ray Data tasks over every pair of every split.

    python -m jobs.verify_dataset --data runs/dataset [--json runs/dataset/verify.json] [--split test]
    python -m jobs.verify_dataset --data runs/dataset --check        # integrity only: seconds, no Ray, no pixels

Every run starts with `dataset_io.check_dataset` (manifest, Parquet footers, schemas, row counts, prompt
files); `--check` stops there and prints what it checked. A damaged dataset exits 2 with one message naming
the file and the fix. Prints and writes `chosen_all_hold` (fraction of chosen images where all relations hold),
`rejected_exact_violations` (fraction of rejected images whose violated relations are exactly the recorded
ones; a relation naming an object that is not drawn with its shape counts as violated), object presence in both
(a rejected image counts as right when it shows every object but the ones its record names missing,
`world.missing_object_prob`, or drawn in another shape, `world.wrong_shape_prob`), and per-relation-type
breakdowns.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline.dataset_io import DatasetError, check_dataset, decode_image, split_dir
from data_pipeline.pairs import SPLITS
from data_pipeline.verifier import margins_for, present_as_recorded, verify
from spatialrl.config import ConfigError, add_config_args, job_config


@dataclass
class VerifyDatasetConfig:
    data: str = ""  # dataset folder (from jobs.build_dataset)
    json: str | None = None  # also write the report here
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    check: bool = False  # only the integrity check (no pixels, no Ray)
    batch_size: int = 64  # pairs per verifier task
    num_cpus: int | None = None  # local Ray only
    address: str | None = None

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("data is empty: pass --data DIR (a folder jobs.build_dataset wrote)")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ConfigError(f"splits={self.splits}: choose from {list(SPLITS)}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")


def verify_batch(batch: dict) -> dict:
    """Ray Data body: one row of verdicts per pair (per-type tallies as JSON)."""
    out = defaultdict(list)
    for chosen, rejected, rel in zip(batch["chosen_image"], batch["rejected_image"], batch["relations"]):
        if not rel:
            out["has_relations"].append(False)
            for k in ("chosen_all_hold", "rejected_exact", "chosen_present", "rejected_present"):
                out[k].append(False)
            out["by_type"].append("{}")
            continue
        info = json.loads(rel)
        objs, rels, violated = info["objects"], info["relations"], set(info.get("violated", []))
        c_img, r_img = np.asarray(decode_image(chosen)), np.asarray(decode_image(rejected))
        margins = margins_for(c_img.shape[0])
        vc = verify(c_img, objs, rels, margins)
        vr = verify(r_img, objs, rels, margins)
        failed = {i for i, ok in enumerate(vr.holds_as_stated(rels)) if not ok}
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, chosen ok, rejected as recorded
        for i, r in enumerate(rels):
            t = by_type[r["type"]]
            t[0] += 1
            t[1] += int(vc.relations_hold[i])
            t[2] += int((i in failed) == (i in violated))
        not_drawn = list(info.get("missing", [])) + [w["object"] for w in info.get("wrong_shape", [])]
        out["has_relations"].append(True)
        out["chosen_all_hold"].append(vc.all_hold)
        out["rejected_exact"].append(failed == violated)
        out["chosen_present"].append(all(vc.objects_present))
        out["rejected_present"].append(present_as_recorded(vr.objects_present, not_drawn))
        out["by_type"].append(json.dumps(by_type))
    return dict(out)


def summarise(rows: list[dict]) -> dict:
    checked = [r for r in rows if r["has_relations"]]
    n = len(checked)
    frac = lambda key: (sum(bool(r[key]) for r in checked) / n) if n else None  # noqa: E731
    types: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in checked:
        for t, (k, c, rj) in json.loads(r["by_type"]).items():
            types[t][0] += k
            types[t][1] += c
            types[t][2] += rj
    return {
        "n_pairs": len(rows),
        "n_checked": n,
        "n_without_relations": len(rows) - n,
        "chosen_all_hold": frac("chosen_all_hold"),
        "rejected_exact_violations": frac("rejected_exact"),
        "chosen_objects_present": frac("chosen_present"),
        "rejected_objects_present": frac("rejected_present"),
        "by_relation_type": {
            t: {"relations": k, "chosen_hold": c / k, "rejected_as_recorded": rj / k} for t, (k, c, rj) in sorted(types.items())
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data", help="dataset folder (from jobs.build_dataset)")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--split", choices=SPLITS, action="append", help="only these splits (repeatable)")
    parser.add_argument("--check", action="store_true", default=None,
                        help="only check integrity (manifest, Parquet footers, schemas, row counts); no pixels")
    parser.add_argument("--num-cpus", type=int)
    parser.add_argument("--address")
    args = parser.parse_args(argv)
    cfg = job_config(VerifyDatasetConfig, args, {
        "data": args.data, "json": args.json, "splits": args.split, "check": args.check,
        "num_cpus": args.num_cpus, "address": args.address,
    })
    if isinstance(cfg, int):
        return cfg
    try:
        manifest = check_dataset(Path(cfg.data), tuple(cfg.splits))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.check:
        counts = {s: manifest["counts"].get(s, {}).get("pairs", 0) for s in cfg.splits}
        shards = {s: len(list(split_dir(Path(cfg.data), s).glob("*.parquet"))) for s in cfg.splits}
        print(f"ok: {cfg.data}: manifest, {sum(shards.values())} Parquet shards (footers, schemas) and prompt files "
              f"match; pairs per split {counts}")
        if cfg.json:
            Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json).write_text(json.dumps({"data": cfg.data, "check": "ok", "pairs": counts, "shards": shards}))
        return 0

    import ray

    from cluster.runtime import cpu_bound_data_context, ray_session

    splits = [s for s in cfg.splits if split_dir(Path(cfg.data), s).is_dir()]
    report = {"data": str(cfg.data), "splits": {}}
    with ray_session(cfg.address, cfg.num_cpus):
        cpu_bound_data_context()
        all_rows = []
        for s in splits:
            ds = ray.data.read_parquet(str(split_dir(Path(cfg.data), s))).select_columns(
                ["chosen_image", "rejected_image", "relations"])
            rows = ds.map_batches(verify_batch, batch_size=cfg.batch_size, num_cpus=1).take_all()
            report["splits"][s] = summarise(rows)
            all_rows += rows
    report.update(summarise(all_rows))
    print(f"verified {report['n_checked']} pairs in {cfg.data} ({', '.join(splits)})")
    for key in ("chosen_all_hold", "rejected_exact_violations", "chosen_objects_present", "rejected_objects_present"):
        v = report[key]
        print(f"  {key:28s} {v:.4f}" if v is not None else f"  {key:28s} n/a (no structured relations)")
    for t, d in report["by_relation_type"].items():
        print(f"  {t:14s} n={d['relations']:7d}  chosen hold {d['chosen_hold']:.4f}  rejected as recorded {d['rejected_as_recorded']:.4f}")
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(report, indent=2))
        print(f"  report: {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
