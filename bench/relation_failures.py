"""Benchmark: how a GRPO run's held-out relations fail, read back from its evaluation grids and eval.json.

Each relation of each held-out image falls in one class by the verifier's signed margin (data_pipeline.relations):
an object of the relation is not found (its colour is missing), the wrong side (margin <= 0), too close (0 < margin
< 1, holds but not decisively) or holds (>= 1). Beside that, relation accuracy split by whether every named object
is drawn as named (object presence 1) or not, from the per-image numbers in eval.json. The grids are
`eval_vNNNN.png` of `jobs.grpo` (one row per prompt, `grpo.eval_images_per_prompt` images per row, 2 px gaps).

    python -m bench.relation_failures --run runs/grpo --prompts runs/demo/dataset/prompts_test.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.relations import relation_score
from data_pipeline.verifier import margins_for, read_objects

PAD = 2  # spatialrl.flux.evaluation.image_grid's gap


def grid_tiles(path: Path, rows: int, cols: int) -> list[np.ndarray]:
    """The images of an image_grid PNG, row by row."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    side = (grid.shape[1] - PAD) // cols - PAD
    if grid.shape[0] != rows * (side + PAD) + PAD:
        raise SystemExit(f"{path}: {grid.shape[0]} px tall is not {rows} rows of {side} px images; check --prompts")
    return [grid[PAD + r * (side + PAD):PAD + r * (side + PAD) + side, PAD + c * (side + PAD):PAD + c * (side + PAD) + side]
            for r in range(rows) for c in range(cols)]


def failure_classes(images: list[np.ndarray], rows: list[dict], per_prompt: int) -> dict[str, float]:
    """Share of all relations in each class: missing object, wrong side, too close, holds."""
    counts = dict.fromkeys(("missing_object", "wrong_side", "too_close", "holds"), 0)
    for i, image in enumerate(images):
        row = rows[i // per_prompt]
        m = read_objects(image, row["objects"])
        margins = margins_for(image.shape[0])
        for r in row["relations"]:
            if m.area[r["subject"]] == 0 or m.area[r["object"]] == 0:
                counts["missing_object"] += 1
                continue
            score = relation_score(m, r["subject"], r["type"], r["object"], margins)
            counts["wrong_side" if score <= 0 else "too_close" if score < 1 else "holds"] += 1
    total = max(1, sum(counts.values()))
    return {k: round(v / total, 4) for k, v in counts.items()} | {"relations": total}


def by_presence(evaluation: dict) -> dict[str, float]:
    """Relation accuracy on the images whose every named object is drawn as named, and on the rest."""
    acc = np.array(evaluation["relation_accuracy_per_image"], dtype=float)
    whole = np.array(evaluation["object_presence_per_image"], dtype=float) == 1
    return {"share_all_present": round(float(whole.mean()), 4),
            "relation_accuracy_all_present": round(float(acc[whole].mean()), 4) if whole.any() else None,
            "relation_accuracy_others": round(float(acc[~whole].mean()), 4) if (~whole).any() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a jobs.grpo run folder (eval.json, eval_v*.png)")
    parser.add_argument("--prompts", required=True, help="the run's data.eval_prompts (prompts_test.jsonl)")
    parser.add_argument("--json", default="", help="also write the table here")
    args = parser.parse_args(argv)
    run = Path(args.run)
    evals = json.loads((run / "eval.json").read_text())
    with open(args.prompts) as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    out = {}
    for key, ev in evals.items():
        n, per = ev["prompts"], ev["images"] // ev["prompts"]
        grid = run / f"eval_v{ev['policy_version']:04d}.png"
        row = {"policy_version": ev["policy_version"], "relation_accuracy": ev.get("relation_accuracy")}
        if grid.is_file():
            row |= failure_classes(grid_tiles(grid, n, per), prompts[:n], per)
        if "object_presence_per_image" in ev:
            row |= by_presence(ev)
        out[key] = row
        print(f"{key:>8}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
