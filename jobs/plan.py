"""Capacity planner: how many GPUs the GRPO roles need for a config, and what a step then costs.

Reads the GRPO shape from a GRPO preset (prompts per step, group size, denoising and trained steps, Top-k,
staleness, checkpoint interval) and per-role unit costs (`--measured FILE.json`: `bench/plan_calibrate.py`
writes one on this machine's tiny models; a GPU benchmark writes the same keys), then prints, for each `--gpus`,
the split into sampler / reward / learner replicas (one per GPU) with the shortest predicted step, its seconds
per step, images/s and each role's utilisation (`cluster/capacity.py`). `--simulate` plays the driver loop as
discrete events with stragglers, actor failures and checkpoints and prints what that costs on top.

    python -m jobs.plan --config configs/grpo_flux_dev.yaml --gpus 8 64 512
    python -m jobs.plan --config configs/grpo_demo.yaml --measured runs/plan/costs.json --gpus 3 --simulate

Without `--measured` the costs are the H200 anchors in cluster/costs_h200.json (plain stack, bf16, measured
once with random weights; see its `source`), not a measurement of your cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from cluster.capacity import GRPOShape, PlanError, RoleCosts, SimConfig, plan, simulate
from spatialrl.config import ConfigError, REPO_ROOT, add_config_args, dump_yaml, load_config, validate_tree
from spatialrl.grpo.config import GRPOJobConfig
from spatialrl.grpo.math import trained_steps

DEFAULT_COSTS = REPO_ROOT / "cluster" / "costs_h200.json"


def shape_of(cfg: GRPOJobConfig, checkpoint_s: float = 0.0) -> GRPOShape:
    """The GRPO shape the planner needs, as the loop and the learner compute it."""
    s, g = cfg.sampler, cfg.grpo
    window = s.sde_steps or s.num_steps
    steps = [j for j in trained_steps(s.num_steps, cfg.learner.timestep_fraction) if j < window]
    G = s.group_size
    kept = 2 * g.top_k / G if g.top_k and G > 2 * g.top_k else 1.0
    return GRPOShape(prompts_per_step=g.prompts_per_step, group_size=G, num_steps=s.num_steps,
                     trained_steps=len(steps), kept_fraction=kept, max_staleness=g.max_staleness,
                     checkpoint_every=g.save_every, checkpoint_s=checkpoint_s)


def read_costs(path: Path) -> tuple[RoleCosts, dict]:
    if not path.is_file():
        raise PlanError(f"--measured {path} does not exist; write one with python -m bench.plan_calibrate "
                        f"--config configs/grpo_demo.yaml --out {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PlanError(f"--measured {path} is not JSON ({exc}); bench/plan_calibrate.py writes the format") from None
    if not isinstance(data, dict):
        raise PlanError(f"--measured {path} must hold a JSON object of unit costs")
    return RoleCosts.from_dict(data), data


def table(rows: list[dict]) -> str:
    head = ("GPUs", "sampler", "reward", "learner", "s/step", "images/s", "util s/r/l", "bottleneck", "unused")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        u = r["utilisation"]
        lines.append(" | ".join(str(x) for x in (
            r["gpus_offered"], r["split"]["sampler"], r["split"]["reward"], r["split"]["learner"], f"{r['step_s']:.2f}",
            f"{r['images_per_s']:.2f}", f"{u['sampler']:.2f}/{u['reward']:.2f}/{u['learner']:.2f}", r["bottleneck"],
            r["gpus_offered"] - r["gpus"])))
    return "\n".join(lines)


def memory_lines(cfg: GRPOJobConfig, gpu_gib: float) -> dict:
    """Print each role's estimated memory per replica against its share of a GPU (`num_gpus`, 1 when 0)."""
    from spatialrl.grpo.memory import GIB, role_memory

    out = {}
    print(f"memory per replica (estimate: weights exact from the configs, activations by formula; "
          f"spatialrl/grpo/memory.py), GPU of {gpu_gib:g} GiB:")
    for role, mem in role_memory(cfg).items():
        share = getattr(cfg.cluster, role).num_gpus or 1.0
        room = share * gpu_gib * GIB
        verdict = "fits" if mem.total_bytes <= room else f"DOES NOT FIT (over by {(mem.total_bytes - room) / GIB:.1f} GiB)"
        print(f"  {role:<8} {mem.line()}: {verdict} in {share:g} GPU")
        out[role] = {**mem.to_dict(), "gpu_share": share, "fits": mem.total_bytes <= room}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config="configs/grpo_flux_dev.yaml")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 512], help="cluster sizes to plan for")
    parser.add_argument("--measured", type=Path, default=None,
                        help=f"per-role unit costs (JSON); default {DEFAULT_COSTS.relative_to(REPO_ROOT)}")
    parser.add_argument("--simulate", action="store_true", help="also run the discrete-event simulation")
    parser.add_argument("--sim-steps", type=int, default=30)
    parser.add_argument("--stragglers", type=float, default=0.1, help="lognormal sigma of task times (simulation)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of tasks lost with their actor")
    parser.add_argument("--restart-s", type=float, default=60.0, help="seconds to restart a lost actor")
    parser.add_argument("--json", type=Path, default=None, help="also write the plans here")
    parser.add_argument("--memory", action="store_true",
                        help="also estimate each role's memory per replica (the models' configs on the meta device)")
    parser.add_argument("--gpu-memory-gb", type=float, default=139.0, help="memory of one GPU, GiB (H200: 139)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(GRPOJobConfig, args.config, args.overrides, validate=False)
        for part in (cfg.sampler, cfg.learner, cfg.grpo):  # the parts the plan reads (no data or checkpoint needed)
            validate_tree(part)
        if args.dry_run:
            print(dump_yaml(cfg))
            return 0
        costs, raw = read_costs(args.measured or DEFAULT_COSTS)
        shape = shape_of(cfg, checkpoint_s=float(raw.get("checkpoint_s", 0.0)))
        shape.validate()
        if any(n < 3 for n in args.gpus):
            raise PlanError(f"--gpus {args.gpus}: every size must be >= 3 (one GPU per role at least)")
        if args.sim_steps < 2 or args.stragglers < 0 or not 0 <= args.failure_rate < 1 or args.restart_s < 0:
            raise PlanError("--sim-steps >= 2, --stragglers >= 0, --failure-rate in [0, 1), --restart-s >= 0")
    except (ConfigError, PlanError) as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    print(f"config {args.config}: {shape.prompts_per_step} prompts x {shape.group_size} images per step, "
          f"{shape.num_steps} denoising steps, {shape.trained_steps} trained, kept fraction {shape.kept_fraction:.2f}, "
          f"max_staleness {shape.max_staleness}")
    print(f"unit costs ({(costs.source or str(args.measured)).split(':')[0]}): sampler {costs.sampler_s_per_image_step:.4g} s per "
          f"image-step, reward {costs.reward_s_per_image:.4g} s per image, learner {costs.learner_s_per_sample_step:.4g} "
          f"s per sample-step + {costs.learner_step_overhead_s:.3g} s per step, sync {costs.sync_s:.3g} s")
    rows = []
    for n in args.gpus:
        p = plan(shape, costs, n)
        row = {**p.to_dict(), "gpus_offered": n}
        if args.simulate:
            sim = SimConfig(steps=args.sim_steps, straggler_sigma=args.stragglers, failure_rate=args.failure_rate,
                            restart_s=args.restart_s, seed=0)
            res = simulate(shape, costs, p.split, sim)
            skip = min(shape.max_staleness + 1, args.sim_steps - 1)
            row["simulated"] = {"step_s": res.mean_step_s(skip), "failures": res.failures,
                                "utilisation": res.utilisation(p.split), **asdict(sim)}
        rows.append(row)
    print(table(rows))
    for r in rows:
        if r["gpus"] < r["gpus_offered"]:
            print(f"{r['gpus_offered']} GPUs: only {r['gpus']} help at this shape ({shape.prompts_per_step} groups per "
                  f"step, one sampler per group at most); raise grpo.prompts_per_step to use the rest")
        if "simulated" in r:
            s = r["simulated"]
            print(f"{r['gpus_offered']} GPUs simulated ({args.sim_steps} steps, stragglers sigma {args.stragglers}, "
                  f"failure rate {args.failure_rate}): {s['step_s']:.2f} s/step "
                  f"({(s['step_s'] / r['step_s'] - 1) * 100:+.1f}% vs the closed form), {s['failures']} failures")
    print(f"to run it: --set cluster.sampler.count={rows[-1]['split']['sampler']} "
          f"--set cluster.reward.count={rows[-1]['split']['reward']} "
          f"--set cluster.learner.count={rows[-1]['split']['learner']} (for {rows[-1]['gpus_offered']} GPUs)")
    memory = memory_lines(cfg, args.gpu_memory_gb) if args.memory else None
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": args.config, "shape": asdict(shape), "costs": asdict(costs),
                                         "plans": rows, **({"memory": memory} if memory else {})}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
