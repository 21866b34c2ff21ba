"""On-disk layout of a SpatialReward dataset, shared by the builder, the importer and the readers.

    DIR/
      manifest.json              counts per split and per perturbation level, world parameters, seed, ...
      train/ val/ test/          Parquet shards, columns of docs/architecture.md section 4 (PAIR_COLUMNS below)
      prompts_{split}.jsonl      one object per line: prompt, relations, objects (the structured prompt)
      preview.png                a contact sheet of a few pairs with their prompts

Metadata is read with pyarrow directly (no image columns touched), so counting and writing the prompt files
costs seconds even at 80k pairs.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image, ImageDraw, ImageFont

from data_pipeline.pairs import PAIR_COLUMNS, SPLITS

MANIFEST = "manifest.json"
PAIR_SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("prompt", pa.string()),
    ("chosen_image", pa.binary()),
    ("rejected_image", pa.binary()),
    ("num_perturbations", pa.int64()),
    ("perturbed_prompt", pa.string()),
    ("category", pa.string()),
    ("relations", pa.string()),
    ("source", pa.string()),
    ("split", pa.string()),
])
assert tuple(PAIR_SCHEMA.names) == PAIR_COLUMNS


class DatasetError(ValueError):
    """The dataset folder is missing, incomplete or malformed; the message says what to do."""


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new dataset into an existing one: nothing is silently lost or overwritten."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out} exists and is not empty; choose another --out or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def split_dir(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / split


def check_dataset(data_dir: Path, splits: tuple[str, ...] = SPLITS) -> dict:
    """The manifest, after checking that the folder looks like a dataset; raises DatasetError otherwise."""
    data_dir = Path(data_dir)
    mf = data_dir / MANIFEST
    if not mf.is_file():
        raise DatasetError(
            f"{data_dir} is not a SpatialReward dataset (no {MANIFEST}); build one with "
            f"`python -m jobs.build_dataset --out {data_dir}` or import pairs with --import"
        )
    manifest = json.loads(mf.read_text())
    for s in splits:
        if manifest["counts"].get(s, {}).get("pairs", 0) and not split_dir(data_dir, s).is_dir():
            raise DatasetError(f"{data_dir}: manifest lists split {s!r} but {split_dir(data_dir, s)} is missing")
    return manifest


def read_columns(data_dir: Path, split: str, columns: list[str]) -> pa.Table:
    d = split_dir(data_dir, split)
    if not d.is_dir():
        return pa.table({c: pa.array([], PAIR_SCHEMA.field(c).type) for c in columns})
    table = pads.dataset(str(d), format="parquet").to_table(columns=columns)
    return table.sort_by("pair_id") if "pair_id" in columns else table


def split_counts(data_dir: Path) -> dict:
    counts = {}
    for s in SPLITS:
        t = read_columns(data_dir, s, ["num_perturbations"])
        levels = Counter(t.column("num_perturbations").to_pylist())
        counts[s] = {
            "pairs": t.num_rows,
            "by_perturbations": {str(k) if k is not None else "unknown": v for k, v in sorted(levels.items(), key=str)},
        }
    return counts


def write_prompts_jsonl(data_dir: Path) -> None:
    """prompts_{split}.jsonl: the structured prompts the verifier, the sampler and the GRPO job read."""
    for s in SPLITS:
        t = read_columns(data_dir, s, ["pair_id", "prompt", "relations"])
        with open(Path(data_dir) / f"prompts_{s}.jsonl", "w") as f:
            for pid, prompt, rel in zip(*(t.column(c).to_pylist() for c in ("pair_id", "prompt", "relations"))):
                info = json.loads(rel) if rel else {}
                f.write(json.dumps({
                    "pair_id": pid, "prompt": prompt,
                    "relations": info.get("relations"), "objects": info.get("objects"),
                }) + "\n")


def write_manifest(data_dir: Path, info: dict) -> dict:
    manifest = {"format": "spatialreward-v1", "columns": list(PAIR_COLUMNS), **info, "counts": split_counts(data_dir)}
    (Path(data_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def decode_image(data: bytes) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data)).convert("RGB")


def write_preview(data_dir: Path, n: int = 6, split: str | None = None, tile: int = 192) -> Path | None:
    """preview.png: for n pairs, chosen | rejected side by side, the prompt and what the rejected one breaks."""
    split = split or next((s for s in ("test", "val", "train") if split_dir(data_dir, s).is_dir()), None)
    if split is None:
        return None
    d = split_dir(data_dir, split)
    table = pads.dataset(str(d), format="parquet").head(n, columns=list(PAIR_COLUMNS))
    rows = table.to_pylist()
    if not rows:
        return None
    font, small = _font(13), _font(11)
    text_w = 520
    row_h = tile + 16
    sheet = Image.new("RGB", (2 * tile + text_w + 30, row_h * len(rows) + 30), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 6), f"chosen (left) vs rejected (right): {data_dir} [{split}]", fill=(0, 0, 0), font=font)
    for r_i, row in enumerate(rows):
        y = 26 + r_i * row_h
        for c_i, key in enumerate(("chosen_image", "rejected_image")):
            img = decode_image(row[key]).resize((tile, tile), Image.NEAREST)
            sheet.paste(img, (10 + c_i * (tile + 5), y))
        info = json.loads(row["relations"]) if row["relations"] else {}
        rels = info.get("relations") or []
        objs = info.get("objects") or []
        broken = [rels[i] for i in info.get("violated", [])]

        def name(i: int) -> str:
            return f"{objs[i]['colour']} {objs[i]['shape']}" if i < len(objs) else str(i)

        lines = [(line, (0, 0, 0)) for line in textwrap.wrap(row["prompt"], 88)[:9]]
        verdict = f"[{row['num_perturbations']} perturbed] rejected breaks: " + "; ".join(
            f"{name(b['subject'])} {b['type']} {name(b['object'])}" for b in broken)
        lines += [(line, (150, 0, 0)) for line in textwrap.wrap(verdict, 88)[:3]]
        tx = 2 * tile + 25
        for l_i, (line, colour) in enumerate(lines):
            draw.text((tx, y + l_i * 15), line, fill=colour, font=small)
    out = Path(data_dir) / "preview.png"
    sheet.save(out)
    return out


__all__ = [
    "MANIFEST", "PAIR_SCHEMA", "DatasetError", "prepare_out_dir", "check_dataset", "read_columns",
    "split_counts", "write_prompts_jsonl", "write_manifest", "write_preview", "decode_image",
]
