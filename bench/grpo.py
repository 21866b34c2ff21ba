"""Benchmarks of jobs.grpo, each comparing two settings in one run on the same machine, seed and budget.

- `topk`: Top-k filtering on (grpo.top_k=K) vs off (top_k=0, plain GRPO on every sample), the same number of
  steps and sampled images: final reward, held-out verifier relation accuracy and SpatialScore (ODE, fixed seeds),
  and seconds per step (the learner trains on 2K of G samples with Top-k).
- `samplers`: throughput with 1 vs 2 sampler actors (images/s over whole steps, and the mean time waiting for
  rewards), everything else equal.
- `staleness`: on-policy (grpo.max_staleness=0) vs sampling one step ahead while the learner trains
  (max_staleness=1): seconds per step and images/s, the same seed and steps.

Each variant is a full `jobs.grpo` run (its own actors) in one local Ray, in alternating order when
`--repeats` > 1. `--seeds 0,1,2` runs every variant once per seed (grpo.seed: prompt order, sampling noise,
evaluation seeds) and reports the held-out gain (paired over the same images before and after) as the mean over
seeds with its standard error across seeds. Prints a markdown table and writes JSON next to the runs.

    python -m bench.grpo topk --config configs/grpo_demo.yaml --out runs/bench-topk --set sampler.model=... \
        --set reward.checkpoint=... --set data.prompts=... --set data.eval_prompts=...
    python -m bench.grpo samplers --out runs/bench-samplers --set data.prompts=... --set reward.checkpoint=...
    python -m bench.grpo staleness --config configs/grpo_demo.yaml --out runs/bench-staleness --set grpo.steps=4 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from spatialrl.metrics import read_metrics

VARIANTS = {
    "topk": lambda k: {f"top-k on (k={k})": [f"grpo.top_k={k}"], "top-k off (all samples)": ["grpo.top_k=0"]},
    "samplers": lambda k: {"1 sampler": ["cluster.sampler.count=1"], "2 samplers": ["cluster.sampler.count=2"]},
    "staleness": lambda k: {"on-policy (max_staleness 0)": ["grpo.max_staleness=0"],
                            "max_staleness 1": ["grpo.max_staleness=1"]},
}


def summarize(run: Path) -> dict:
    rows = read_metrics(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    last = rows[-max(1, len(rows) // 4):]  # the last quarter of the steps
    out = {
        "steps": len(rows),
        "reward_last_quarter": statistics.fmean(r["reward/mean"] for r in last),
        "verifier_last_quarter": statistics.fmean(r.get("verifier/relation_accuracy") or 0.0 for r in last),
        "s_per_step": statistics.fmean(r["time/step_s"] for r in rows[1:] or rows),
        "train_s_per_step": statistics.fmean(r["time/train_s"] for r in rows[1:] or rows),
        "wait_s_per_step": statistics.fmean(r["time/wait_for_rewards_s"] for r in rows[1:] or rows),
        "images_per_s": statistics.fmean(r["perf/images_per_s"] for r in rows[1:] or rows),
        "kept_fraction": statistics.fmean(r["topk/kept_fraction"] for r in rows),
    }
    for when in ("base", "final"):
        if when in summary:
            out[f"eval_{when}_verifier"] = summary[when].get("relation_accuracy")
            out[f"eval_{when}_spatialscore"] = summary[when].get("spatialscore")
            out[f"eval_{when}_presence"] = summary[when].get("object_presence")
    if "relation_accuracy_per_image" in summary.get("base", {}) and "final" in summary:
        from spatialrl.flux.evaluation import paired_gain

        gain, se, n = paired_gain(summary["base"]["relation_accuracy_per_image"],
                                  summary["final"]["relation_accuracy_per_image"])
        out.update({"eval_gain": gain, "eval_gain_se": se, "eval_images": n})
    return out


def across_seeds(rs: list[dict], key: str) -> tuple[float, float]:
    """Mean over runs and its standard error across runs (NaN with one run)."""
    xs = [r[key] for r in rs if r.get(key) is not None]
    if not xs:
        return float("nan"), float("nan")
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return statistics.fmean(xs), se


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=sorted(VARIANTS))
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--k", type=int, default=6, help="Top-k's k for the `topk` comparison")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seeds", default="", help="comma list of grpo.seed values, one run of each variant per seed")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or [None] * args.repeats

    from cluster.runtime import ray_session
    from jobs import grpo

    variants = VARIANTS[args.what](args.k)
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with ray_session():
        for rep, seed in enumerate(seeds):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                tag = f"seed{seed}" if seed is not None else str(rep)
                run = args.out / f"{name.split(' (')[0].replace(' ', '_')}_{tag}"
                cmd = (["--config", args.config] if args.config else []) + ["--out", str(run), "--overwrite"]
                for o in args.overrides + variants[name] + ([f"grpo.seed={seed}"] if seed is not None else []):
                    cmd += ["--set", o]
                rc = grpo.main(cmd)
                if rc:
                    raise SystemExit(f"{name}: jobs.grpo exited {rc}")
                results[name].append(summarize(run))
    table = {name: {k: statistics.fmean(r[k] for r in rs if r.get(k) is not None)
                    for k in rs[0] if any(r.get(k) is not None for r in rs)} for name, rs in results.items()}
    keys = list(next(iter(table.values())))
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.4g}" for k in keys) + " |")
    if any("eval_gain" in r for rs in results.values() for r in rs):
        print(f"\nheld-out verifier relation accuracy gain (paired per image), mean over {len(seeds)} run(s) "
              f"+- standard error across runs:")
        print("| variant | base | after | gain | per run (gain +- its paired se) |\n|---|---|---|---|---|")
        for name, rs in results.items():
            gain, se = across_seeds(rs, "eval_gain")
            base, _ = across_seeds(rs, "eval_base_verifier")
            after, _ = across_seeds(rs, "eval_final_verifier")
            per = ", ".join(f"{r['eval_gain']:+.3f} +- {r['eval_gain_se']:.3f}" for r in rs if "eval_gain" in r)
            print(f"| {name} | {base:.3f} | {after:.3f} | {gain:+.3f} +- {se:.3f} | {per} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench_{args.what}.json").write_text(json.dumps({"runs": results, "mean": table}, indent=2))
    return table


if __name__ == "__main__":
    main()
