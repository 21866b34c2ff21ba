"""Evaluate SpatialScore like the paper's Table 1: pairwise accuracy overall, on 1-perturbation pairs and on
2-3-perturbation pairs, with baselines measured in the same run.

Runs as Ray Data batch inference: a pool of actors, each holding a `SpatialScorer` per model, scores the
chosen and the rejected image of every pair. Baselines (same backbone, same data, same run):
  - "untrained head": the checkpoint's backbone + LoRA with a freshly initialised head (chance level),
  - "fresh LoRA + head": the backbone with a new LoRA (B = 0) and a new head, i.e. no reward training,
  - "VLM judge": a Qwen2.5-VL asked zero-shot whether the image matches the prompt, P(yes) from its logits
    (`spatialrl.reward.judges.VLMJudge`; the paper's Table 1 rows for Qwen2.5-VL-7B/32B/72B). `--vlm-judge` names
    the model (default: the checkpoint's own backbone; `Qwen/Qwen2.5-VL-7B-Instruct` for the paper's row; `none`
    to skip it). A pair is won when the chosen image gets the higher P(yes).

    python -m jobs.eval_reward --checkpoint runs/reward/final --data runs/dataset [--split test] [--json OUT]

Writes JSON (`accuracy`, `accuracy_1pert`, `accuracy_2to3pert`, `accuracy_missing_object` / `accuracy_wrong_shape` /
`accuracy_moved` (None without left-out or reshaped objects), `n_pairs`, mean scores, baselines) and a
markdown table (`--markdown`, default next to the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.dataset_io import DatasetError, check_dataset, decode_image, split_dir
from spatialrl.config import ConfigError, add_config_args, job_config

MODELS = ("spatialscore", "untrained_head", "fresh_lora_head", "vlm_judge")
LABELS = {
    "spatialscore": "SpatialScore (this checkpoint)",
    "untrained_head": "baseline: checkpoint LoRA + untrained head",
    "fresh_lora_head": "baseline: backbone + fresh LoRA + head",
    "vlm_judge": "baseline: VLM judge, zero-shot P(yes)",
}
PAPER_ROWS = [  # reported in the paper (its own benchmark and models), for orientation only
    ("GPT-5 (paper)", 89.0, None, None),
    ("Gemini-2.5 Pro (paper)", 95.1, None, None),
    ("SpatialScore, Qwen2.5-VL-7B (paper)", 95.8, 93.9, 97.8),
]


class PairScorer:
    """Ray Data actor: scores chosen and rejected images of a batch of pairs with every model."""

    def __init__(self, checkpoint: str, batch_size: int, seed: int, vlm_judge: str | None = None,
                 head_baselines: bool = True):
        import torch

        from spatialrl.reward.scorer import SpatialScorer

        self.scorers = {"spatialscore": SpatialScorer.from_checkpoint(checkpoint, batch_size=batch_size)}
        self.vlm = None
        if vlm_judge:
            from spatialrl.reward.judges import VLMJudge

            self.vlm = VLMJudge(vlm_judge, batch_size=batch_size)
        if not head_baselines:
            return
        cfg = self.scorers["spatialscore"].model.cfg
        head_only = SpatialScorer.from_checkpoint(checkpoint, batch_size=batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in head_only.model.head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.scorers["untrained_head"] = head_only
        self.scorers["fresh_lora_head"] = SpatialScorer.untrained(cfg=cfg, seed=seed, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        prompts = list(batch["prompt"])
        chosen = [decode_image(b) for b in batch["chosen_image"]]
        rejected = [decode_image(b) for b in batch["rejected_image"]]
        out = {"pair_id": np.asarray(batch["pair_id"]).astype(str),
               "num_perturbations": np.asarray([-1 if v is None else int(v) for v in batch["num_perturbations"]]),
               "missing_object": np.asarray([c == "missing_object" for c in batch.get("category", [None] * len(prompts))]),
               "wrong_shape": np.asarray([c == "wrong_shape" for c in batch.get("category", [None] * len(prompts))])}
        for name, scorer in self.scorers.items():
            out[f"{name}_chosen"] = scorer.score(prompts, chosen)
            out[f"{name}_rejected"] = scorer.score(prompts, rejected)
        if self.vlm is not None:
            from data_pipeline.benchmarks import prompt_question

            questions = [prompt_question(p).text for p in prompts]
            out["vlm_judge_chosen"] = self.vlm.p_yes(questions, chosen)
            out["vlm_judge_rejected"] = self.vlm.p_yes(questions, rejected)
        return out


def metrics(rows: dict, name: str) -> dict:
    c, r = np.asarray(rows[f"{name}_chosen"]), np.asarray(rows[f"{name}_rejected"])
    k = np.asarray(rows["num_perturbations"])
    missing = np.asarray(rows.get("missing_object", np.zeros(len(k), dtype=bool))).astype(bool)
    reshaped = np.asarray(rows.get("wrong_shape", np.zeros(len(k), dtype=bool))).astype(bool)
    win = c > r

    def acc(mask):
        return float(win[mask].mean()) if mask.any() else None

    return {
        "accuracy": acc(np.ones_like(win)), "accuracy_1pert": acc(k == 1), "accuracy_2to3pert": acc((k == 2) | (k == 3)),
        "n_pairs": int(len(win)), "n_1pert": int((k == 1).sum()), "n_2to3pert": int(((k == 2) | (k == 3)).sum()),
        "mean_score_chosen": float(c.mean()), "mean_score_rejected": float(r.mean()),
        # rejected images that leave an object out (world.missing_object_prob), draw one in another shape
        # (world.wrong_shape_prob), or move objects
        "accuracy_missing_object": acc(missing), "accuracy_wrong_shape": acc(reshaped),
        "accuracy_moved": acc(~missing & ~reshaped) if (missing | reshaped).any() else None,
        "n_missing_object": int(missing.sum()), "n_wrong_shape": int(reshaped.sum()),
    }


def markdown_table(report: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    missing = (f"; {report['n_missing_object']} rejected images leave an object out: SpatialScore "
               f"{pct(report['accuracy_missing_object'])} on those" if report.get("n_missing_object") else "")
    if report.get("n_wrong_shape"):
        missing += (f"; {report['n_wrong_shape']} draw one in another shape: SpatialScore "
                    f"{pct(report['accuracy_wrong_shape'])} on those")
    if report.get("accuracy_moved") is not None:
        missing += f", {pct(report['accuracy_moved'])} on the moved ones"
    lines = [f"Pairwise accuracy (%) on `{report['data']}` split `{report['split']}`, {report['n_pairs']} pairs "
             f"({report['n_1pert']} with 1 perturbation, {report['n_2to3pert']} with 2-3{missing}).", "",
             "| model | overall | 1-pert | 2-3-pert | mean score chosen | mean score rejected |",
             "|---|---|---|---|---|---|"]
    for name in MODELS:
        m = report if name == "spatialscore" else report["baselines"].get(name)
        if m is None:
            continue
        label = LABELS[name] + (f" ({report['vlm_judge']})" if name == "vlm_judge" else "")
        lines.append(f"| {label} | {pct(m['accuracy'])} | {pct(m['accuracy_1pert'])} | "
                     f"{pct(m['accuracy_2to3pert'])} | {m['mean_score_chosen']:.3f} | {m['mean_score_rejected']:.3f} |")
    lines += ["", "Reported in the paper on its own benchmark (not measured here):", "",
              "| model | overall | 1-pert | 2-3-pert |", "|---|---|---|---|"]
    for label, o, one, more in PAPER_ROWS:
        lines.append(f"| {label} | {o} | {one if one is not None else '-'} | {more if more is not None else '-'} |")
    return "\n".join(lines) + "\n"


@dataclass
class EvalRewardConfig:
    checkpoint: str = ""  # a SpatialScore checkpoint folder (jobs.train_reward's OUT/final)
    data: str = ""  # a SpatialReward dataset folder
    split: str = "test"
    num_actors: int = 1  # scoring actors (Ray Data actor pool)
    cpus_per_actor: float = 1.0
    batch_size: int = 32
    max_pairs: int = 0  # 0 = every pair of the split
    seed: int = 0
    vlm_judge: str = "backbone"  # zero-shot VLM-judge baseline: backbone, a preset, hub id or folder; none to skip
    head_baselines: bool = True  # also score the checkpoint with an untrained head, and a fresh LoRA + head
    address: str = ""  # empty: RAY_ADDRESS or a new local Ray
    num_cpus: int = 0  # local Ray only; 0 = the machine's

    def validate(self) -> None:
        if not self.checkpoint or not self.data:
            raise ConfigError("give --checkpoint DIR/final (jobs.train_reward's output) and --data DATASET_DIR")
        if self.num_actors < 1 or self.batch_size < 1 or self.max_pairs < 0 or self.cpus_per_actor <= 0:
            raise ConfigError("num_actors and batch_size >= 1, cpus_per_actor > 0, max_pairs >= 0 (0 = all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="a SpatialScore checkpoint folder (e.g. runs/reward/final)")
    parser.add_argument("--data", help="a SpatialReward dataset folder")
    parser.add_argument("--split")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--num-actors", type=int)
    parser.add_argument("--cpus-per-actor", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--vlm-judge",
                        help="Qwen2.5-VL for the zero-shot VLM-judge baseline: backbone (the checkpoint's), a preset, "
                             "hub id (Qwen/Qwen2.5-VL-7B-Instruct) or folder; none to skip")
    parser.add_argument("--no-head-baselines", dest="head_baselines", action="store_false", default=None,
                        help="skip the two untrained-head baselines (half the scoring time)")
    parser.add_argument("--address")
    parser.add_argument("--num-cpus", type=int)
    args = parser.parse_args(argv)
    keys = [f.name for f in dataclasses.fields(EvalRewardConfig)]
    cfg = job_config(EvalRewardConfig, args, {k: getattr(args, k) for k in keys})
    if isinstance(cfg, int):
        return cfg
    try:
        check_dataset(Path(cfg.data))
        from spatialrl.reward.model import read_checkpoint_meta

        from spatialrl.models.loader import resolve_model_path
        from spatialrl.reward.model import config_from_meta

        meta = read_checkpoint_meta(Path(cfg.checkpoint))
        vlm_judge = None if cfg.vlm_judge == "none" else (
            config_from_meta(meta, Path(cfg.checkpoint)).backbone if cfg.vlm_judge == "backbone" else cfg.vlm_judge)
        if vlm_judge:
            resolve_model_path(vlm_judge, "qwen")  # not on disk: the message says how to download it
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not split_dir(Path(cfg.data), cfg.split).is_dir():
        print(f"error: {cfg.data} has no {cfg.split!r} split", file=sys.stderr)
        return 2

    import ray

    from cluster.runtime import ray_session

    with ray_session(cfg.address or None, cfg.num_cpus or None):
        ds = ray.data.read_parquet(str(split_dir(Path(cfg.data), cfg.split))).select_columns(
            ["pair_id", "prompt", "chosen_image", "rejected_image", "num_perturbations", "category"])
        if cfg.max_pairs:
            ds = ds.limit(cfg.max_pairs)
        scored = ds.map_batches(
            PairScorer, fn_constructor_kwargs={"checkpoint": str(Path(cfg.checkpoint).resolve()),
                                               "batch_size": cfg.batch_size, "seed": cfg.seed,
                                               "vlm_judge": vlm_judge, "head_baselines": cfg.head_baselines},
            batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.cpus_per_actor,
        ).to_pandas()
    rows = {c: scored[c].to_numpy() for c in scored.columns}
    report = {"checkpoint": str(cfg.checkpoint), "data": str(cfg.data), "split": cfg.split,
              "vlm_judge": vlm_judge, **metrics(rows, "spatialscore"),
              "baselines": {name: metrics(rows, name) for name in MODELS[1:] if f"{name}_chosen" in rows}}
    table = markdown_table(report)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        md = Path(args.markdown) if args.markdown else Path(args.json).with_suffix(".md")
        md.write_text(table)
        print(f"wrote {args.json} and {md}")
    elif args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
