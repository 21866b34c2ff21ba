"""Import external preference pairs (JSONL or CSV + an image folder) into the SpatialReward dataset layout.

    python -m jobs.build_dataset --import pairs.jsonl --images-root imgs/ --out runs/imported [--on-bad-row skip]

Each row names a prompt and two images, as `chosen`/`rejected`, `chosen_path`/`rejected_path`, or HPSv3's
`path1` (the preferred image) / `path2`; optional columns are `pair_id`, `num_perturbations` (1-3), `category`,
`perturbed_prompt`, `relations` (the spatial world's structured prompt, JSON) and `split`. A `.json` file may
also be one JSON array of objects (HPSv3's own files are). Other columns are ignored and listed in the manifest.

Every row is checked before anything is written: the prompt, the columns, the image paths (which must stay
inside --images-root after resolving `..` and symlinks; a path outside it is never opened) and the images
themselves (each must decode with PIL; chosen and rejected must have the same size, since a pair is compared
as it is: nothing is stretched to fit; a non-square pair is letterboxed by the reader, spatialrl/reward/prompt.py).
With `on_bad_row="error"` (the default) any bad row stops the import
with a `BadRowsError` that names the rows and the problems; with `"skip"` bad rows are left out and counted by
reason, so `rows_imported + rows_skipped == rows_in_file` always holds. Blank lines are not rows.

Two Ray Data passes do the image work in parallel tasks. The first reads and decodes each distinct image once
(HPSv3 reuses an image across many pairs) and keeps only its status and SHA-256, not its bytes, so the object
store never has to hold the whole dataset. The second, run only once every row is known to be good (or
skipped), reads the images again, checks each against the SHA-256 it was validated with, and writes the pairs
of each split to Parquet with `dataset_io.PAIR_SCHEMA`; the stored bytes are the original files, not
re-encoded. A row without a `split` gets one from a hash of (seed, pair_id), so it is stable when rows are
added or removed; the fractions are met in expectation, not exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from data_pipeline.dataset_io import PAIR_SCHEMA, write_split
from data_pipeline.pairs import PAIR_COLUMNS, SPLITS
from data_pipeline.relations import RELATION_TYPES
from data_pipeline.world import PALETTE, SHAPES

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
IMAGE_FORMS = (("chosen", "rejected"), ("chosen_path", "rejected_path"), ("path1", "path2"))  # (preferred, other)
OPTIONAL_COLUMNS = ("pair_id", "num_perturbations", "category", "perturbed_prompt", "relations", "split")
KNOWN_COLUMNS = {"prompt", *OPTIONAL_COLUMNS, *(k for form in IMAGE_FORMS for k in form)}
MAX_IMAGE_BYTES = 32 << 20  # larger files are refused, so that one Parquet batch stays well under 2 GiB
SHOW_BAD_ROWS = 10  # how many bad rows an error message lists
IMAGES_PER_TASK = 64  # pass 1: distinct images checked per Ray Data task
PAIRS_PER_BATCH = 16  # pass 2: pairs per Ray Data batch (two images each, up to MAX_IMAGE_BYTES apiece)
PAIRS_PER_FILE = 128  # pass 2: pairs per Parquet file
IMAGE_PAIRS = "chosen + rejected, chosen_path + rejected_path, or path1 + path2"
NEEDED_COLUMNS = f"'prompt' and one image pair: {IMAGE_PAIRS} (HPSv3: path1 is the preferred image)"
FIX_HINT = (
    "Fix or remove these rows, or pass --on-bad-row skip (import_pairs(on_bad_row='skip')) to import only the "
    "good rows and count the skipped ones by reason in manifest.json."
)


class BadRowsError(ValueError):
    """Rows of an import file are bad (or the file cannot be read as rows); the message names them and the fix."""


class ImportFileError(BadRowsError):
    """The import file as a whole is unusable: missing, empty, of an unknown format, or without the needed columns."""


class ImageChangedError(RuntimeError):
    """An image file changed between validation and writing (raised inside a Ray task, so it takes one str)."""


class _Bad(Exception):
    """One row's problem: a reason key (counted in the manifest) and a sentence for the error message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


@dataclass
class RawRow:
    number: int  # 1-based line (JSONL), item (JSON array) or data row (CSV)
    where: str  # "line 7", "item 7", "row 3 (line 4)"
    fields: dict | None  # None when the row could not be parsed at all
    problem: _Bad | None = None


# ---- reading the file (driver) ----

def _not_utf8(file: Path, exc: UnicodeDecodeError) -> ImportFileError:
    return ImportFileError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")


def _object_row(number: int, where: str, obj: Any) -> RawRow:
    if isinstance(obj, dict):
        return RawRow(number, where, obj)
    return RawRow(number, where, None, _Bad("not_an_object", f"expected a JSON object, got {type(obj).__name__}"))


def _read_jsonl(file: Path) -> tuple[list[RawRow], int]:
    rows, blank = [], 0
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                rows.append(RawRow(number, where, None, _Bad("bad_encoding", f"not UTF-8 ({exc.reason})")))
                continue
            if not text.strip():
                blank += 1
                continue
            try:
                rows.append(_object_row(number, where, json.loads(text)))
            except json.JSONDecodeError as exc:
                bad = _Bad("bad_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
                rows.append(RawRow(number, where, None, bad))
    return rows, blank


def _read_json_array(file: Path) -> list[RawRow]:
    try:
        items = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise _not_utf8(file, exc) from exc
    except json.JSONDecodeError as exc:
        raise ImportFileError(f"{file}: not a valid JSON array ({exc.msg} at line {exc.lineno}, column {exc.colno})")
    if not isinstance(items, list):
        raise ImportFileError(f"{file}: expected one JSON object per line or a JSON array of objects")
    return [_object_row(number, f"item {number}", obj) for number, obj in enumerate(items, start=1)]


def _read_csv(file: Path) -> tuple[list[RawRow], list[str], int]:
    rows, blank, header = [], 0, None
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for record in reader:
                if not any(cell.strip() for cell in record):
                    blank += 1
                    continue
                if header is None:
                    header = [c.strip() for c in record]
                    dupes = sorted(c for c, n in Counter(header).items() if n > 1)
                    if dupes:
                        raise ImportFileError(f"{file}: the header repeats column(s) {dupes}; give each column once")
                    continue
                number = len(rows) + 1
                where = f"row {number} (line {reader.line_num})"
                if len(record) != len(header):
                    bad = _Bad("wrong_field_count",
                               f"has {len(record)} fields, the header has {len(header)} (check the quoting of commas)")
                    rows.append(RawRow(number, where, None, bad))
                    continue
                rows.append(RawRow(number, where, {k: (v if v != "" else None) for k, v in zip(header, record)}))
    except UnicodeDecodeError as exc:
        raise _not_utf8(file, exc) from exc
    except csv.Error as exc:
        raise ImportFileError(f"{file}: malformed CSV ({exc}); check the quoting") from exc
    return rows, header or [], blank


def read_rows(file: Path) -> tuple[list[RawRow], list[str], int]:
    """The file's rows (parsed, or with their problem), the columns seen, and how many blank lines were ignored."""
    fmt = FILE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise ImportFileError(
            f"{file}: unknown import format {file.suffix or '(no extension)'!r}; supported: JSONL (.jsonl, .ndjson, "
            ".json: one object per line, or one JSON array) and CSV with a header row (.csv). Convert or rename it."
        )
    if fmt == "csv":
        return _read_csv(file)
    with open(file, "rb") as f:
        is_array = fmt == "json" and f.read(4096).decode("utf-8-sig", errors="replace").lstrip().startswith("[")
    rows, blank = (_read_json_array(file), 0) if is_array else _read_jsonl(file)
    columns = list(dict.fromkeys(k for r in rows for k in (r.fields or ())))
    return rows, columns, blank


def _check_columns(file: Path, columns: list[str]) -> None:
    have = set(columns)
    if "prompt" in have and any(set(form) <= have for form in IMAGE_FORMS):
        return
    where = "the header has" if file.suffix.lower() == ".csv" else "the rows have"
    raise ImportFileError(f"{file}: {where} columns {columns}; an import file needs {NEEDED_COLUMNS}. Rename them.")


# ---- checking one row's fields (driver; pure) ----

def assign_split(seed: int, pair_id: str, fractions: list[float]) -> str:
    """A split for a row without one: a hash of (seed, pair_id) placed on the cumulative fractions."""
    u = int.from_bytes(hashlib.sha256(f"{seed}\0{pair_id}".encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _text(v: Any, key: str) -> str | None:
    if isinstance(v, list) and key == "category" and all(isinstance(c, str) for c in v):
        v = ",".join(v)  # the generator stores categories comma-joined
    if v is None or isinstance(v, str):
        return v if v is not None and v.strip() else None
    raise _Bad("bad_field", f"{key} must be text, got {type(v).__name__} {v!r}")


def _num_perturbations(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            pass
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 3:
        return v
    raise _Bad("bad_num_perturbations", f"num_perturbations must be 1, 2 or 3 (or empty), got {v!r}")


def _indices(v: Any, n: int, what: str) -> None:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in v):
        raise _Bad("bad_relations", f"relations: {what} must be indices in [0, {n}), got {v!r}")


def _relations(v: Any) -> str | None:
    """The spatial world's structured prompt, checked as far as the verifier, the preview and GRPO rely on it."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            raise _Bad("bad_relations", f"relations is not valid JSON ({exc.msg})") from None
    if not isinstance(v, dict) or not isinstance(v.get("objects"), list) or not isinstance(v.get("relations"), list):
        raise _Bad("bad_relations",
                   'relations must be empty or a JSON object {"objects": [...], "relations": [...], "violated": [...]}')
    objs = v["objects"]
    for o in objs:
        if not isinstance(o, dict) or o.get("colour") not in PALETTE or o.get("shape") not in SHAPES:
            raise _Bad("bad_relations",
                       f"relations: object {o!r} needs a colour in {list(PALETTE)} and a shape in {list(SHAPES)}")
    if len({o["colour"] for o in objs}) != len(objs):
        raise _Bad("bad_relations", "relations: object colours must be distinct (colour identifies the object)")
    for r in v["relations"]:
        if not isinstance(r, dict) or r.get("type") not in RELATION_TYPES:
            raise _Bad("bad_relations", f"relations: {r!r} needs a type in {list(RELATION_TYPES)}")
        _indices([r.get("subject"), r.get("object")], len(objs), "a relation's subject and object")
    _indices(v.get("violated", []), len(v["relations"]), "violated")
    return json.dumps(v)


def _images(fields: dict) -> tuple[str, str]:
    given = [form for form in IMAGE_FORMS if any(fields.get(k) is not None for k in form)]
    if not given:
        raise _Bad("missing_image", f"no image paths; give {IMAGE_PAIRS}")
    if len(given) > 1:
        both = " and as ".join("/".join(f) for f in given)
        raise _Bad("ambiguous_images", f"images given twice, as {both}; keep one pair")
    paths = []
    for key in given[0]:
        p = fields.get(key)
        if p is None or (isinstance(p, str) and not p.strip()):
            raise _Bad("missing_image", f"{key} is missing or empty")
        if not isinstance(p, str):
            raise _Bad("bad_path", f"{key} must be a path (text), got {type(p).__name__} {p!r}")
        paths.append(p)
    return paths[0], paths[1]


def parse_row(fields: dict, number: int, seed: int, fractions: list[float]) -> dict:
    """A row's pair (metadata + image paths), or `_Bad` with its first problem."""
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise _Bad("bad_field", f"prompt must be text, got {type(prompt).__name__}")
    if prompt is None or not prompt.strip():
        raise _Bad("empty_prompt", "prompt is missing or empty")
    chosen, rejected = _images(fields)
    pid = fields.get("pair_id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    elif pid is not None and not isinstance(pid, str):
        raise _Bad("bad_field", f"pair_id must be text or an integer, got {type(pid).__name__} {pid!r}")
    pid = pid.strip() if pid and pid.strip() else f"import-{number:07d}"
    split = fields.get("split")
    if split is not None:
        if not isinstance(split, str) or split.strip().lower() not in SPLITS:
            raise _Bad("bad_split", f"split must be one of {list(SPLITS)} (or empty to assign one), got {split!r}")
        split = split.strip().lower()
    return {
        "pair_id": pid,
        "prompt": prompt,
        "num_perturbations": _num_perturbations(fields.get("num_perturbations")),
        "perturbed_prompt": _text(fields.get("perturbed_prompt"), "perturbed_prompt"),
        "category": _text(fields.get("category"), "category"),
        "relations": _relations(fields.get("relations")),
        "source": "import",
        "split": split or assign_split(seed, pid, fractions),
        "chosen_path": chosen,
        "rejected_path": rejected,
    }


def _label(row: RawRow) -> str:
    """Where a bad row is and what it looks like: line 7 (pair_id 'x', prompt 'a red circle...')."""
    f = row.fields or {}
    bits = []
    if isinstance(f.get("pair_id"), (str, int)) and str(f["pair_id"]).strip():
        bits.append(f"pair_id {str(f['pair_id'])!r}")
    if isinstance(f.get("prompt"), str) and f["prompt"].strip():
        p = " ".join(f["prompt"].split())
        bits.append(f"prompt {p[:40] + '...' if len(p) > 40 else p!r}")
    return f"{row.where} ({', '.join(bits)})" if bits else row.where


# ---- images (Ray Data task bodies) ----

def read_image_file(root: Path, rel: str) -> bytes:
    """The bytes of `rel` under the resolved folder `root`; a path that resolves outside root is never opened."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # embedded NUL, symlink loop, ...
        raise _Bad("bad_path", f"image path {rel!r} cannot be resolved ({exc})") from None
    if not path.is_relative_to(root):
        how = "is absolute and" if os.path.isabs(rel) else "resolves (through '..' or a symlink) to a file that"
        raise _Bad("outside_images_root",
                   f"image path {rel!r} {how} is outside --images-root {root}; refused, not read. "
                   "Image paths must be relative to --images-root and stay inside it")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _Bad("missing_file", f"image {rel!r} not found under {root}") from None
    except OSError as exc:
        raise _Bad("unreadable_file", f"image {rel!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Bad("not_a_file", f"image path {rel!r} is not a regular file")
    if st.st_size > MAX_IMAGE_BYTES:
        raise _Bad("image_too_large", f"image {rel!r} has {st.st_size} bytes, over the limit of {MAX_IMAGE_BYTES}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Bad("unreadable_file", f"image {rel!r} cannot be read ({exc.strerror})") from None


def _decode_check(rel: str, data: bytes) -> tuple[str, str]:
    """The image's format and size ("WxH"), after a full decode to RGB (what dataset_io.decode_image does)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB")
            return img.format, f"{img.width}x{img.height}"
    except UnidentifiedImageError:
        raise _Bad("undecodable_image", f"image {rel!r} does not decode (not an image format PIL knows)") from None
    except Exception as exc:  # PIL raises many types on damaged data (OSError, SyntaxError, ValueError, ...)
        raise _Bad("undecodable_image", f"image {rel!r} does not decode ({type(exc).__name__}: {exc})") from None


def check_images_batch(batch: pa.Table, images_root: str) -> pa.Table:
    """Pass 1, one row per distinct image path: read it, decode it fully, keep its status and SHA-256."""
    root = Path(images_root)
    out: dict[str, list] = {"path": [], "reason": [], "detail": [], "sha256": [], "format": [], "size": []}
    for rel in batch.column("path").to_pylist():
        reason = detail = sha = fmt = size = None
        try:
            data = read_image_file(root, rel)
            fmt, size = _decode_check(rel, data)
            sha = hashlib.sha256(data).hexdigest()
        except _Bad as bad:
            reason, detail = bad.reason, bad.detail
        for k, v in zip(out, (rel, reason, detail, sha, fmt, size)):
            out[k].append(v)
    return pa.table(out, schema=pa.schema([(k, pa.string()) for k in out]))


def load_pairs_batch(batch: pa.Table, images_root: str) -> pa.Table:
    """Pass 2: pair rows with the original image bytes, each checked against the SHA-256 validated in pass 1."""
    root = Path(images_root)
    rows = []
    for p in batch.to_pylist():
        row = {c: p.get(c) for c in PAIR_COLUMNS}
        for side in ("chosen", "rejected"):
            try:
                data = read_image_file(root, p[f"{side}_path"])
                why = None if hashlib.sha256(data).hexdigest() == p[f"{side}_sha256"] else "its bytes differ"
            except _Bad as bad:
                why = bad.detail
            if why is not None:
                raise ImageChangedError(
                    f"image {p[f'{side}_path']!r} (pair {p['pair_id']}) changed while importing ({why}); "
                    "rerun the import with --overwrite once the image folder is stable"
                )
            row[f"{side}_image"] = data
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


# ---- the import ----

def _check_images(root: Path, paths: list[str]) -> dict[str, dict]:
    """Pass 1 over the distinct image paths, as parallel Ray Data tasks: path -> reason, detail, sha256, format."""
    import ray

    if not paths:
        return {}
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=math.ceil(len(paths) / IMAGES_PER_TASK))
    checked = ds.map_batches(
        check_images_batch, fn_kwargs={"images_root": str(root)}, batch_format="pyarrow",
        batch_size=IMAGES_PER_TASK, num_cpus=1,
    )
    return {r["path"]: r for r in checked.take_all()}


def _write_split(root: Path, pairs: list[dict], dest: Path) -> None:
    """Pass 2 for one split: read the images again in parallel tasks and write Parquet with PAIR_SCHEMA."""
    import ray

    ds = ray.data.from_items(pairs, override_num_blocks=math.ceil(len(pairs) / PAIRS_PER_BATCH))
    loaded = ds.map_batches(
        load_pairs_batch, fn_kwargs={"images_root": str(root)}, batch_format="pyarrow",
        batch_size=PAIRS_PER_BATCH, num_cpus=1,
    )
    write_split(loaded, dest, PAIRS_PER_FILE, schema=PAIR_SCHEMA)


def _by_reason(bad: list[tuple[RawRow, _Bad]]) -> Counter:
    return Counter(b.reason for _, b in bad)


def _bad_rows_message(file: Path, n_rows: int, bad: list[tuple[RawRow, _Bad]], *, none_good: bool) -> str:
    head = (f"{file}: all {n_rows} rows are bad, so there is nothing to import" if none_good
            else f"{file}: {len(bad)} of {n_rows} rows are bad; nothing was written")
    lines = [head + ":"] + [f"  {_label(r)}: {b.detail}" for r, b in bad[:SHOW_BAD_ROWS]]
    if len(bad) > SHOW_BAD_ROWS:
        lines.append(f"  ... and {len(bad) - SHOW_BAD_ROWS} more bad rows")
    lines.append("Bad rows by problem: " + ", ".join(f"{k} {v}" for k, v in _by_reason(bad).most_common()) + ".")
    lines.append("Fix the rows (or the --images-root they are relative to)." if none_good else FIX_HINT)
    return "\n".join(lines)


def import_pairs(
    file: Path, images_root: Path, out: Path, *, on_bad_row: str = "error", seed: int = 0,
    splits: list[float] = (0.9, 0.05, 0.05),
) -> dict:
    """Check every row of `file`, then write the good pairs to out/{train,val,test}/ as Parquet.

    Returns the manifest's import section. Raises BadRowsError, with nothing written, when a row is bad and
    on_bad_row is "error" or when every row is bad; ImportFileError (a BadRowsError) when the file itself is
    unusable. Needs Ray initialised: the image work runs as Ray Data tasks.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row={on_bad_row!r}: use 'error' or 'skip'")
    file, images_root = Path(file), Path(images_root)
    if not file.is_file():
        raise ImportFileError(f"{file}: import file not found; check the --import path")
    if not images_root.is_dir():
        raise ImportFileError(f"{images_root}: --images-root is not a folder; give the folder the image paths are in")
    root = images_root.resolve()

    raw, columns, blank = read_rows(file)
    if columns:  # the CSV header, or the keys of the JSON rows that parsed: checked once for the whole file
        _check_columns(file, columns)
    if not raw:
        raise ImportFileError(f"{file}: no rows (the file is empty, or has only a header or blank lines)")

    bad: list[tuple[RawRow, _Bad]] = []
    pairs: list[tuple[RawRow, dict]] = []
    first_use: dict[str, str] = {}
    for r in raw:
        try:
            if r.problem is not None:
                raise r.problem
            pair = parse_row(r.fields, r.number, seed, list(splits))
            pid = pair["pair_id"]
            if pid in first_use:
                raise _Bad("duplicate_pair_id", f"pair_id {pid!r} is already used by {first_use[pid]}")
            first_use[pid] = r.where
            pairs.append((r, pair))
        except _Bad as b:
            bad.append((r, b))

    status = _check_images(root, sorted({p[k] for _, p in pairs for k in ("chosen_path", "rejected_path")}))
    good = []
    for r, p in pairs:
        problems = [(side, status[p[f"{side}_path"]]) for side in ("chosen", "rejected")]
        problems = [(side, s) for side, s in problems if s["reason"]]
        if problems:
            side, s = problems[0]
            bad.append((r, _Bad(s["reason"], f"{side}: {s['detail']}")))
            continue
        sizes = (status[p["chosen_path"]]["size"], status[p["rejected_path"]]["size"])
        if sizes[0] != sizes[1]:  # the reward model would compare a stretched image with an unstretched one
            bad.append((r, _Bad("size_mismatch",
                                f"chosen {p['chosen_path']!r} is {sizes[0]} px but rejected {p['rejected_path']!r} is "
                                f"{sizes[1]}; a pair must be one size (crop or pad one of them; images are never "
                                "stretched)")))
            continue
        p["chosen_sha256"] = status[p["chosen_path"]]["sha256"]
        p["rejected_sha256"] = status[p["rejected_path"]]["sha256"]
        good.append(p)
    bad.sort(key=lambda rb: rb[0].number)

    if bad and (on_bad_row == "error" or not good):
        raise BadRowsError(_bad_rows_message(file, len(raw), bad, none_good=not good))
    for split in SPLITS:
        rows = [p for p in good if p["split"] == split]
        if rows:
            _write_split(root, rows, Path(out) / split)

    reasons = _by_reason(bad)
    if bad:
        counts = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
        print(f"import: skipped {len(bad)} bad rows of {len(raw)} ({counts}); see skipped_examples in manifest.json",
              file=sys.stderr)
    formats = Counter(status[p[f"{side}_path"]]["format"] for p in good for side in ("chosen", "rejected"))
    return {
        "source": "import",
        "import_file": str(file.resolve()),
        "images_root": str(root),
        "seed": seed,
        "on_bad_row": on_bad_row,
        "rows_in_file": len(raw),
        "rows_imported": len(good),
        "rows_skipped": len(bad),
        "skip_reasons": reasons,
        "skipped_examples": [f"{_label(r)}: {b.detail}" for r, b in bad[:SHOW_BAD_ROWS]],
        "blank_lines_ignored": blank,
        "ignored_columns": sorted(c for c in columns if c not in KNOWN_COLUMNS),
        "image_formats": dict(sorted(formats.items())),
    }


__all__ = [
    "BadRowsError", "ImportFileError", "ImageChangedError", "import_pairs", "read_rows", "parse_row",
    "assign_split", "read_image_file", "check_images_batch", "load_pairs_batch",
]
