"""On-disk layout of a SpatialReward dataset, shared by the builder, the importer and the readers.

    DIR/
      manifest.json              counts per split and per perturbation level, world parameters, seed, ...
      train/ val/ test/          Parquet shards, columns of docs/architecture.md section 4 (PAIR_COLUMNS below)
      prompts_{split}.jsonl      one object per line: prompt, relations, objects (the structured prompt)
      preview.png                a contact sheet of a few pairs with their prompts

Metadata is read with pyarrow directly (no image columns touched), so counting and writing the prompt files
costs seconds even at 80k pairs.

`check_dataset` is the cheap integrity check every job that reads a dataset runs first (and
`jobs.verify_dataset --check` alone): the manifest parses and has its keys; every shard of every split opens
(its Parquet footer), has the dataset's columns with their types, and the shards' row counts add up to the
manifest's; the prompt files have one line per pair; an import's `rows_imported + rows_skipped ==
rows_in_file`. It reads footers, never pixels: well under a second for 80k pairs. Each problem raises one
`DatasetError` naming the file, what is wrong and the fix.

A new dataset is built in a hidden staging folder next to `--out` (`staging_out_dir`) and renamed into place
when complete (`publish_out_dir`), so `--overwrite` keeps the old dataset until the new one exists.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from data_pipeline.pairs import PAIR_COLUMNS, SPLITS
import spatialrl.atomic as atomic

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


def staging_out_dir(out: Path, overwrite: bool) -> Path:
    """Where to build a new dataset for `out`: a fresh hidden sibling folder, published by `publish_out_dir`.

    Refuses to mix a new dataset into an existing one: without `overwrite` a non-empty `out` is an error; with
    it, `out` stays untouched until the new dataset is complete."""
    out = Path(out)
    atomic.recover_dir(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file; --out must be a folder (or a path that does not exist yet)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out} exists and is not empty; choose another --out or pass --overwrite to replace it")
    atomic.remove_stale(out.parent, out.name)
    return atomic.staging_dir(out)


def publish_out_dir(staging: Path, out: Path) -> Path:
    """Rename the complete dataset into place; an old dataset at `out` is removed only after that."""
    return atomic.publish_dir(staging, out)


def write_split(ds, dest: Path, min_rows_per_file: int, **kwargs) -> None:
    """Write the Ray Dataset `ds` of pair rows as one split's Parquet shards, in the rows' order: without
    `preserve_order` a shard's rows (and so the order the reward trainer streams them) follow which task finished
    first, and two builds of one config trained different reward models (bench/RESULTS.md, 2026-12-06)."""
    ds.context.execution_options.preserve_order = True
    ds.write_parquet(str(dest), min_rows_per_file=min_rows_per_file, **kwargs)


def split_dir(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / split


REBUILD = ("rebuild the dataset (python -m jobs.build_dataset ... --out {dir} --overwrite, or --import again) "
           "or restore the folder from a copy")
# columns whose type may also be the 64-bit-offset variant pyarrow writes for big blocks
_TYPE_FAMILY = {pa.string(): (pa.string(), pa.large_string()), pa.binary(): (pa.binary(), pa.large_binary())}


def _shard_problem(schema: pa.Schema) -> str | None:
    """What is wrong with a shard's schema against PAIR_SCHEMA, or None."""
    missing = [n for n in PAIR_SCHEMA.names if n not in schema.names]
    if missing:
        return f"is missing column(s) {missing} (it has {schema.names})"
    for field in PAIR_SCHEMA:
        got = schema.field(field.name).type
        ok = _TYPE_FAMILY.get(field.type, (field.type,))
        if field.name == "num_perturbations":
            ok = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
        if got not in ok and not pa.types.is_null(got):
            return f"has column {field.name!r} of type {got}, expected {field.type}"
    return None


def _manifest(data_dir: Path) -> dict:
    mf = data_dir / MANIFEST
    fix = REBUILD.format(dir=data_dir)
    try:
        manifest = json.loads(mf.read_text())
    except UnicodeDecodeError:
        raise DatasetError(f"{mf} is not text (damaged); {fix}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{mf} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): it is "
                           f"truncated or damaged; {fix}") from None
    counts = manifest.get("counts") if isinstance(manifest, dict) else None
    if not isinstance(counts, dict):
        raise DatasetError(f"{mf} has no 'counts' mapping (pairs per split); it is not a manifest jobs.build_dataset "
                           f"wrote, or it was edited; {fix}")
    for split, c in counts.items():
        n = c.get("pairs") if isinstance(c, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DatasetError(f"{mf}: counts.{split}.pairs is {n!r}, not a pair count; {fix}")
    return manifest


def _count_lines(path: Path) -> tuple[int, bool]:
    """Non-empty lines of a text file, and whether the file ends with a newline (False: a torn last line)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
            last = line
    return n, last.endswith(b"\n")


def check_dataset(data_dir: Path, splits: tuple[str, ...] = SPLITS) -> dict:
    """The manifest, after checking that the folder is a whole dataset (module docstring); raises DatasetError."""
    data_dir = Path(data_dir)
    mf = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist; check --data, or build one with "
                           f"`python -m jobs.build_dataset --out {data_dir}`")
    if not mf.is_file():
        raise DatasetError(
            f"{data_dir} is not a SpatialReward dataset (no {MANIFEST}); build one with "
            f"`python -m jobs.build_dataset --out {data_dir}` or import pairs with --import"
        )
    manifest = _manifest(data_dir)
    fix = REBUILD.format(dir=data_dir)
    for s in splits:
        want = manifest["counts"].get(s, {}).get("pairs", 0)
        d = split_dir(data_dir, s)
        if not d.is_dir():
            if want:
                raise DatasetError(f"{data_dir}: manifest lists {want} pairs in split {s!r} but {d} is missing; {fix}")
            continue
        rows = 0
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
        for f in files:
            try:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as exc:
                raise DatasetError(f"{f} is not a readable Parquet file ({str(exc).splitlines()[0]}): it is truncated "
                                   f"or damaged; {fix}") from None
            problem = _shard_problem(schema)
            if problem:
                raise DatasetError(f"{f} {problem}: it is not a shard of this dataset's format "
                                   f"(docs/architecture.md section 4); {fix}")
            rows += meta.num_rows
        if rows != want:
            raise DatasetError(f"{d}: its Parquet files hold {rows} pairs but {mf} lists {want}: a shard is missing, "
                               f"extra or was replaced; {fix}")
        prompts = data_dir / f"prompts_{s}.jsonl"
        if prompts.is_file():
            lines, whole = _count_lines(prompts)
            if lines != want or not whole:
                how = "ends in a torn line" if not whole else f"has {lines} lines"
                raise DatasetError(f"{prompts} {how} but the split has {want} pairs; rewrite it with "
                                   f"`python -c \"from data_pipeline.dataset_io import write_prompts_jsonl; "
                                   f"write_prompts_jsonl('{data_dir}')\"` or {fix}")
    if manifest.get("source") == "import" and all(k in manifest for k in ("rows_in_file", "rows_imported", "rows_skipped")):
        total = sum(c["pairs"] for c in manifest["counts"].values())
        if manifest["rows_imported"] + manifest["rows_skipped"] != manifest["rows_in_file"] or (
                manifest["rows_imported"] != total and set(splits) == set(SPLITS)):
            raise DatasetError(
                f"{mf}: rows_imported {manifest['rows_imported']} + rows_skipped {manifest['rows_skipped']} vs "
                f"rows_in_file {manifest['rows_in_file']} and {total} pairs in the shards do not add up; {fix}")
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
        lines = []
        for pid, prompt, rel in zip(*(t.column(c).to_pylist() for c in ("pair_id", "prompt", "relations"))):
            info = json.loads(rel) if rel else {}
            lines.append(json.dumps({
                "pair_id": pid, "prompt": prompt,
                "relations": info.get("relations"), "objects": info.get("objects"),
            }) + "\n")
        atomic.write_text(Path(data_dir) / f"prompts_{s}.jsonl", "".join(lines))


def write_manifest(data_dir: Path, info: dict) -> dict:
    manifest = {"format": "spatialreward-v1", "columns": list(PAIR_COLUMNS), **info, "counts": split_counts(data_dir)}
    atomic.write_json(Path(data_dir) / MANIFEST, manifest)
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
        if info.get("missing"):
            verdict += " (" + ", ".join(name(i) for i in info["missing"]) + " left out)"
        if info.get("wrong_shape"):
            verdict += " (" + ", ".join(f"{name(w['object'])} drawn as a {w['drawn']}" for w in info["wrong_shape"]) + ")"
        lines += [(line, (150, 0, 0)) for line in textwrap.wrap(verdict, 88)[:3]]
        tx = 2 * tile + 25
        for l_i, (line, colour) in enumerate(lines):
            draw.text((tx, y + l_i * 15), line, fill=colour, font=small)
    out = Path(data_dir) / "preview.png"
    sheet.save(out)
    return out


__all__ = [
    "MANIFEST", "PAIR_SCHEMA", "DatasetError", "staging_out_dir", "publish_out_dir", "check_dataset", "read_columns",
    "split_counts", "write_prompts_jsonl", "write_manifest", "write_preview", "decode_image",
]
