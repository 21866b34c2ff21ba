"""SpatialScore on the CPU presets, end to end: build a dataset, train the reward model, evaluate it.

Runs the three jobs exactly as a user would (separate processes, the documented commands) and times each:

    python -m jobs.build_dataset [--config configs/dataset_easy.yaml] --pairs N --seed S --out RUN/dataset
    python -m jobs.train_reward --config configs/reward_<preset>.yaml --data RUN/dataset --out RUN/reward
    python -m jobs.eval_reward --checkpoint RUN/reward/final --data RUN/dataset --split test --json RUN/eval.json

    python -m bench.reward_cpu --preset cpu  --out runs/bench_reward_cpu   # paper-like world (configs/reward_cpu.yaml)
    python -m bench.reward_cpu --preset demo --out runs/bench_reward_demo  # easy world (configs/reward_demo.yaml)

Prints and writes RUN/summary.json: seconds per stage, test accuracy overall / 1-pert / 2-3-pert and the
baselines of the same run. An existing dataset in RUN/dataset is reused (building is not what is measured).
Its numbers go to bench/RESULTS.md; the default test tier trains the tiny preset (tests/test_train_reward.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    # preset: (reward config, dataset args)
    "cpu": ("configs/reward_cpu.yaml", ["--pairs", "40000", "--seed", "0"]),
    "demo": ("configs/reward_demo.yaml", ["--config", "configs/dataset_easy.yaml", "--pairs", "2000", "--seed", "0"]),
}


def run(cmd: list[str], log: Path) -> float:
    """Run a job as its own process (output to `log`); returns wall seconds; raises if it fails."""
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}; see {log}")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", required=True, help="run folder (dataset/, reward/, eval.json, summary.json)")
    parser.add_argument("--pairs", type=int, help="dataset size (default: the preset's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="passed to train_reward")
    args = parser.parse_args(argv)
    config, data_args = PRESETS[args.preset]
    if args.pairs:
        data_args = [*data_args[: data_args.index("--pairs")], "--pairs", str(args.pairs),
                     *data_args[data_args.index("--pairs") + 2:]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    summary: dict = {"preset": args.preset, "config": config, "dataset_args": data_args, "overrides": args.overrides}
    if not (out / "dataset" / "manifest.json").is_file():
        summary["build_s"] = run([py, "-m", "jobs.build_dataset", *data_args, "--out", str(out / "dataset")],
                                 out / "build.log")
    sets = [x for o in args.overrides for x in ("--set", o)]
    summary["train_s"] = run([py, "-m", "jobs.train_reward", "--config", config, "--data", str(out / "dataset"),
                              "--out", str(out / "reward"), "--overwrite", *sets], out / "train.log")
    summary["eval_s"] = run([py, "-m", "jobs.eval_reward", "--checkpoint", str(out / "reward" / "final"),
                             "--data", str(out / "dataset"), "--split", "test", "--json", str(out / "eval.json")],
                            out / "eval.log")
    report = json.loads((out / "eval.json").read_text())
    summary.update({k: report[k] for k in ("accuracy", "accuracy_1pert", "accuracy_2to3pert", "n_pairs")})
    summary["baselines"] = {k: v["accuracy"] for k, v in report["baselines"].items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
