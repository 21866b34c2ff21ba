"""The GRPO pipeline from 8 to 512 GPUs, planned and simulated: throughput and each role's utilisation.

For FLUX.1-dev's preset (`configs/grpo_flux_dev.yaml`) and the per-role unit costs (`--measured`, default the H200
anchors in cluster/costs_h200.json), plans every cluster size with `jobs.plan`'s planner, plays each plan through
the discrete-event simulation (stragglers, actor failures, checkpoints), and plots images/s and utilisation per
role, on-policy and with max_staleness 1, at the preset's fixed shape and with prompts per step grown with the
cluster (weak scaling).

    python -m bench.plan_scaling --out bench/plan_scaling.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from cluster.capacity import SimConfig, plan, simulate
from jobs.plan import DEFAULT_COSTS, read_costs, shape_of
from spatialrl.config import load_config
from spatialrl.grpo.config import GRPOJobConfig

SIZES = [8, 16, 32, 64, 128, 256, 512]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/grpo_flux_dev.yaml")
    ap.add_argument("--measured", type=Path, default=DEFAULT_COSTS)
    ap.add_argument("--out", type=Path, default=Path("bench/plan_scaling.png"))
    ap.add_argument("--sim-steps", type=int, default=20)
    ap.add_argument("--stragglers", type=float, default=0.1)
    ap.add_argument("--failure-rate", type=float, default=0.002)
    ap.add_argument("--restart-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    cfg = load_config(GRPOJobConfig, args.config, validate=False)
    costs, raw = read_costs(args.measured)
    base = shape_of(cfg, checkpoint_s=float(raw.get("checkpoint_s", 0.0)))
    sim = SimConfig(steps=args.sim_steps, straggler_sigma=args.stragglers, failure_rate=args.failure_rate,
                    restart_s=args.restart_s)
    series = {}
    for label, staleness, weak in (("fixed shape, on-policy", 0, False), ("fixed shape, staleness 1", 1, False),
                                   ("prompts x GPUs/8, on-policy", 0, True), ("prompts x GPUs/8, staleness 1", 1, True)):
        rows = []
        for n in SIZES:
            shape = replace(base, max_staleness=staleness,
                            prompts_per_step=base.prompts_per_step * n // 8 if weak else base.prompts_per_step)
            p = plan(shape, costs, n)
            res = simulate(shape, costs, p.split, sim)
            step = res.mean_step_s(min(staleness + 1, sim.steps - 1))
            rows.append({"gpus": n, "split": [p.split.sampler, p.split.reward, p.split.learner], "used": p.split.gpus,
                         "prompts_per_step": shape.prompts_per_step, "closed_form_step_s": p.step_s,
                         "simulated_step_s": step, "images_per_s": shape.images_per_step / step,
                         "images_per_gpu_s": shape.images_per_step / step / n, "failures": res.failures,
                         "utilisation": res.utilisation(p.split)})
            print(f"{label:30s} {n:4d} GPUs  split {rows[-1]['split']}  closed {p.step_s:8.2f} s  "
                  f"simulated {step:8.2f} s  {rows[-1]['images_per_s']:7.2f} img/s  "
                  f"util " + "/".join(f"{v:.2f}" for v in rows[-1]["utilisation"].values()), flush=True)
        series[label] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"config": args.config, "costs": str(args.measured),
                                                         "sim": vars(sim), "series": series}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for label, rows in series.items():
        xs = [r["gpus"] for r in rows]
        axes[0].plot(xs, [r["images_per_s"] for r in rows], marker="o", label=label)
        axes[1].plot(xs, [r["images_per_gpu_s"] for r in rows], marker="o", label=label)
    for role, style in (("sampler", "-"), ("reward", ":"), ("learner", "--")):
        for label, rows in series.items():
            if "on-policy" in label:
                axes[2].plot([r["gpus"] for r in rows], [r["utilisation"][role] for r in rows], style, marker=".",
                             label=f"{role}, {label.split(',')[0]}")
    axes[0].set_ylabel("images / s (simulated)")
    axes[1].set_ylabel("images / GPU / s")
    axes[2].set_ylabel("utilisation (on-policy)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    fig.suptitle(f"GRPO pipeline plan + simulation: {args.config}, costs {args.measured.name}, stragglers "
                 f"{args.stragglers}, failure rate {args.failure_rate}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
