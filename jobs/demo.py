"""`make demo`: the pipeline on its embedded default, end to end on a laptop CPU, into runs/demo/.

Stages (each reuses its output when present; `--force` redoes them):
  1. dataset/   jobs.build_dataset in the easy world (the setting the toy generator draws), with preview.png
  2. verify.json  jobs.verify_dataset over every pair (both fractions must be 1.0)
Later stages (reward model, GRPO) join here as they land; see README "Status".

    python -m jobs.demo --out runs/demo [--pairs 2000] [--force]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--force", action="store_true", help="redo every stage")
    args = parser.parse_args(argv)

    from cluster.runtime import ray_session
    from jobs import build_dataset, verify_dataset

    out = Path(args.out)
    if args.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    summary: dict = {}
    with ray_session():
        dataset = out / "dataset"
        if not (dataset / "manifest.json").exists():
            print(f"== stage 1: building {args.pairs} pairs into {dataset}", flush=True)
            rc = build_dataset.main(["--config", "configs/dataset_easy.yaml", "--pairs", str(args.pairs),
                                     "--out", str(dataset), "--overwrite"])
            if rc:
                return rc
        else:
            print(f"== stage 1: reusing {dataset}", flush=True)
        report = out / "verify.json"
        if not report.exists():
            print("== stage 2: verifying every pair", flush=True)
            rc = verify_dataset.main(["--data", str(dataset), "--json", str(report)])
            if rc:
                return rc
        v = json.loads(report.read_text())
        summary["dataset"] = {"pairs": v["n_pairs"], "chosen_all_hold": v["chosen_all_hold"],
                              "rejected_exact_violations": v["rejected_exact_violations"]}
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"preview: {dataset / 'preview.png'}")
    ok = summary["dataset"]["chosen_all_hold"] == 1.0 and summary["dataset"]["rejected_exact_violations"] == 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
