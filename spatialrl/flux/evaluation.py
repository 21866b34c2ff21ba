"""Prompt files, verifier summaries and image grids: what every job that generates images shares.

`read_prompts` reads the `prompts_*.jsonl` of jobs.build_dataset (prompt + structured `objects` / `relations`),
a text file with one prompt per line, or a single prompt; `verify_images` runs the pixel-only verifier of
`data_pipeline.verifier` over generated images (object presence, relation accuracy); `image_grid` tiles them.
Used by jobs.sample, jobs.grpo (reward workers and grids) and jobs.demo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image


PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".tsv")


def looks_like_path(arg: str) -> bool:
    """A prompt is words; a path is one token with a file suffix or a folder separator."""
    text = str(arg).strip()
    return bool(text) and not any(c.isspace() for c in text) and (
        Path(text).suffix.lower() in PROMPT_FILE_SUFFIXES or "/" in text or text.startswith("~"))


def read_prompts(arg: str, limit: int | None = None) -> list[dict]:
    """A .jsonl file (objects with `prompt`, optional `objects`/`relations`), a text file (a prompt per line),
    or the prompt itself. Something that looks like a path but is not a file is an error, not a prompt."""
    path = Path(arg)
    if not path.is_file() and looks_like_path(arg):
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"prompts file {arg} {what}; give a .jsonl or text file of prompts (jobs.build_dataset "
                         f"writes DIR/prompts_{{train,val,test}}.jsonl) or the prompt text itself, in quotes")
    if path.is_file():
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text; give a .jsonl or text file of prompts") from None
        if path.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n} is not valid JSON ({exc.msg}; a torn or edited line?): fix that "
                                     "line or rewrite the file") from None
                if not isinstance(row, dict) or not str(row.get("prompt") or "").strip():
                    raise ValueError(f"{path}:{n}: each line must be a JSON object with a non-empty 'prompt'")
                rows.append(row)
        else:
            rows = [{"prompt": ln.strip()} for ln in lines]
    else:
        rows = [{"prompt": arg}]
    if not rows:
        raise ValueError(f"no prompts in {arg}: give a .jsonl with a prompt per line, a text file or a prompt")
    return rows[:limit] if limit else rows


def verify_images(rows: list[dict], images: np.ndarray, k: int) -> tuple[dict | None, list[dict]]:
    """Verifier verdicts per image, and the totals; (None, []) when no prompt carries structure."""
    if not any(r.get("objects") and r.get("relations") is not None for r in rows):
        return None, []
    from data_pipeline.verifier import margins_for, verify

    margins = margins_for(images.shape[1])
    present = holds = n_obj = n_rel = found = perfect = 0
    per_image = []
    for i, img in enumerate(images):
        row = rows[i // k]
        if not row.get("objects"):
            per_image.append({})
            continue
        res = verify(img, row["objects"], row.get("relations") or [], margins)
        present, holds = present + sum(res.objects_present), holds + sum(res.relations_hold)
        n_obj, n_rel = n_obj + len(res.objects_present), n_rel + len(res.relations_hold)
        found += sum(seen is not None for seen in res.shapes_seen)
        perfect += all(res.objects_present) and res.all_hold
        per_image.append({"objects_present": res.objects_present, "relations_hold": res.relations_hold})
    summary = {
        "object_presence": present / max(n_obj, 1),
        "relation_accuracy": holds / max(n_rel, 1),
        # named objects whose colour covers more than a speck, whatever its shape (the gap to object_presence:
        # the right colour drawn in a shape the verifier does not recognise)
        "colour_found": found / max(n_obj, 1),
        "all_correct": perfect / max(len(images), 1),  # images with every object present and every relation held
        "num_images": int(len(images)),
        "num_objects": n_obj,
        "num_relations": n_rel,
    }
    return summary, per_image


def image_grid(images: np.ndarray, rows: int, pad: int = 2) -> Image.Image:
    """[rows * cols, H, W, 3] uint8 -> one image, row r = images r*cols .. r*cols + cols - 1, white gaps of `pad`
    pixels (torchvision's make_grid)."""
    import torch
    from torchvision.utils import make_grid

    if len(images) == 0 or len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows")
    cols = len(images) // rows
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if len(images) == 1:  # make_grid returns a lone image without its border
        chw = torch.cat([chw, torch.full_like(chw, 255)])
        grid = make_grid(chw, nrow=2, padding=pad, pad_value=255)[:, :, : pad + chw.shape[3] + pad]
    else:
        grid = make_grid(chw, nrow=cols, padding=pad, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def paired_gain(before: list, after: list) -> tuple[float, float, int]:
    """Mean gain after - before over items scored both times (None / NaN skipped), its standard error
    (std of the differences, ddof 1, over sqrt n) and n. The items must be the same images (prompt, seed)."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} items before but {len(after)} after: not the same evaluation")
    diffs = [float(a) - float(b) for b, a in zip(before, after)
             if b is not None and a is not None and not (math.isnan(float(a)) or math.isnan(float(b)))]
    n = len(diffs)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(diffs) / n
    if n == 1:
        return mean, float("nan"), 1
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n), n


def ranking_agreement(scores: list, truth: list, group_size: int) -> tuple[float, int]:
    """How well a reward orders the images of one prompt the way an independent check does: over every pair of
    images in the same group (consecutive runs of `group_size`) whose `truth` differs, the share that `scores`
    orders the same way (a tie in `scores` counts one half), and the number of such pairs. (nan, 0) when no pair's
    truth differs; pairs with a None / NaN on either side are left out.

    With SpatialScore as `scores` and the verifier's relation accuracy as `truth` on a GRPO run's held-out images,
    this is the reward's accuracy on the policy's own images, which a reward model trained on rendered pairs can
    lose as the policy moves (bench/RESULTS.md, 2026-12-06 evening)."""
    if len(scores) != len(truth):
        raise ValueError(f"{len(scores)} scores but {len(truth)} truths: not the same images")
    if group_size < 2 or len(scores) % group_size:
        raise ValueError(f"{len(scores)} images do not split into groups of {group_size}")

    def ok(x) -> bool:
        return x is not None and not math.isnan(float(x))

    agree, n = 0.0, 0
    for start in range(0, len(scores), group_size):
        for i in range(start, start + group_size):
            for j in range(i + 1, start + group_size):
                if not (ok(scores[i]) and ok(scores[j]) and ok(truth[i]) and ok(truth[j])) or truth[i] == truth[j]:
                    continue
                n += 1
                if scores[i] == scores[j]:
                    agree += 0.5
                elif (scores[i] > scores[j]) == (truth[i] > truth[j]):
                    agree += 1
    return (agree / n if n else float("nan")), n
