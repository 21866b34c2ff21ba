"""data_pipeline.importer: external JSONL/CSV pairs -> the dataset layout, through `jobs.build_dataset --import`.

One local Ray (2 CPUs) for the whole module. Each bad-row kind runs in both modes: `error` stops with exit code
1 and a message naming the row and the problem, writing nothing; `skip` imports the good rows and the manifest
counts the skipped one by reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from data_pipeline.dataset_io import PAIR_SCHEMA
from data_pipeline.importer import (
    BadRowsError, ImageChangedError, ImportFileError, assign_split, import_pairs, load_pairs_batch,
)
from data_pipeline.pairs import SPLITS
from jobs.build_dataset import main

pytestmark = pytest.mark.ray

RELATIONS = {
    "objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}],
    "relations": [{"subject": 0, "type": "left_of", "object": 1}],
    "violated": [0],
}


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def save(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """imgs/ with good PNGs a-d, sub/c.png, a JPEG, a truncated PNG and a text file; outside.png next to it."""
    root = tmp_path / "imgs"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "d.png"]):
        save(root / name, (40 * i, 200 - 40 * i, 90))
    save(root / "e.jpg", (10, 120, 30), "JPEG")
    (root / "corrupt.png").write_bytes((root / "a.png").read_bytes()[:40])  # a valid PNG header, then nothing
    (root / "notes.png").write_text("not an image\n")
    save(tmp_path / "outside.png", (1, 2, 3))  # a decodable image the importer must refuse to read
    return root


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def run_job(file: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["--import", str(file), "--images-root", str(root), "--out", str(out), *extra])


def read_pairs(out: Path) -> dict[str, dict]:
    """pair_id -> row, over every split folder, after checking each Parquet file has exactly PAIR_SCHEMA."""
    rows = {}
    for split in SPLITS:
        d = out / split
        if not d.is_dir():
            continue
        for f in d.glob("*.parquet"):
            assert pq.read_schema(f).remove_metadata().equals(PAIR_SCHEMA), f
        for r in pads.dataset(str(d), format="parquet").to_table().to_pylist():
            assert r["split"] == split
            rows[r["pair_id"]] = r
    return rows


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_jsonl_import_end_to_end(ray_local, images: Path, tmp_path: Path):
    src = write_jsonl(tmp_path / "pairs.jsonl", [
        {"pair_id": "p1", "prompt": "a red circle left of a blue square", "chosen": "a.png", "rejected": "b.png",
         "num_perturbations": 1, "category": "left_of", "perturbed_prompt": "a red circle right of a blue square",
         "relations": RELATIONS, "split": "train"},
        {"pair_id": "p2", "prompt": "two shapes", "chosen": "sub/c.png", "rejected": "d.png", "num_perturbations": "2",
         "relations": json.dumps(RELATIONS), "split": "VAL"},
        "",  # blank line: not a row
        {"prompt": "a jpeg", "chosen": "e.jpg", "rejected": "a.png"},
    ])
    out = tmp_path / "ds"
    assert run_job(src, images, out) == 0

    m = manifest(out)
    assert (m["source"], m["rows_in_file"], m["rows_imported"], m["rows_skipped"]) == ("import", 3, 3, 0)
    assert m["skip_reasons"] == {} and m["blank_lines_ignored"] == 1
    assert m["image_formats"] == {"JPEG": 1, "PNG": 5}
    assert sum(c["pairs"] for c in m["counts"].values()) == 3
    rows = read_pairs(out)
    assert set(rows) == {"p1", "p2", "import-0000004"}  # the third row is on line 4
    p1, p2, p3 = rows["p1"], rows["p2"], rows["import-0000004"]
    assert p1["chosen_image"] == (images / "a.png").read_bytes()
    assert p1["rejected_image"] == (images / "b.png").read_bytes()
    assert p3["chosen_image"] == (images / "e.jpg").read_bytes()  # original bytes, not re-encoded
    assert (p1["split"], p2["split"]) == ("train", "val")
    assert p3["split"] == assign_split(0, "import-0000004", [0.9, 0.05, 0.05])
    assert (p1["num_perturbations"], p2["num_perturbations"], p3["num_perturbations"]) == (1, 2, None)
    assert json.loads(p1["relations"]) == RELATIONS and json.loads(p2["relations"]) == RELATIONS
    assert p3["relations"] is None and p3["category"] is None and p3["perturbed_prompt"] is None
    assert {r["source"] for r in rows.values()} == {"import"}
    prompts = [json.loads(line) for line in (out / "prompts_train.jsonl").read_text().splitlines()]
    assert {"pair_id": "p1", "prompt": p1["prompt"], "relations": RELATIONS["relations"],
            "objects": RELATIONS["objects"]} in prompts


def test_hpsv3_csv_import_end_to_end(ray_local, images: Path, tmp_path: Path):
    src = write_csv(tmp_path / "hps.csv", ["prompt", "path1", "path2", "model1", "confidence"], [
        ["a cat", "a.png", "b.png", "flux", "0.9"],
        ["a dog, on a sofa", "e.jpg", "sub/c.png", "sdxl", "0.7"],
        ["", "", "", "", ""],  # an all-empty record is a blank line, not a row
        ["a bird", "d.png", "a.png", "sd3", "0.6"],
    ])
    out = tmp_path / "ds"
    assert run_job(src, images, out, "--seed", "7") == 0

    m = manifest(out)
    assert (m["rows_in_file"], m["rows_imported"], m["rows_skipped"], m["seed"]) == (3, 3, 0, 7)
    assert m["ignored_columns"] == ["confidence", "model1"]
    rows = read_pairs(out)
    assert sorted(rows) == ["import-0000001", "import-0000002", "import-0000003"]
    for pid, (pref, other, prompt) in {
        "import-0000001": ("a.png", "b.png", "a cat"),
        "import-0000002": ("e.jpg", "sub/c.png", "a dog, on a sofa"),
        "import-0000003": ("d.png", "a.png", "a bird"),
    }.items():
        r = rows[pid]
        assert r["chosen_image"] == (images / pref).read_bytes()  # path1 is the preferred image
        assert r["rejected_image"] == (images / other).read_bytes()
        assert r["prompt"] == prompt
        assert r["split"] == assign_split(7, pid, [0.9, 0.05, 0.05])


# name -> (how to break line 2, skip reason, words the error must contain)
BAD_ROWS = {
    "missing_file": ({"chosen": "nope.png"}, "missing_file", "'nope.png' not found"),
    "corrupt_bytes": ({"chosen": "corrupt.png"}, "undecodable_image", "'corrupt.png' does not decode"),
    "text_file": ({"rejected": "notes.png"}, "undecodable_image", "rejected: image 'notes.png' does not decode"),
    "empty_prompt": ({"prompt": "  \t "}, "empty_prompt", "prompt is missing or empty"),
    "dotdot_escape": ({"chosen": "../outside.png"}, "outside_images_root", "'../outside.png' resolves (through"),
    "absolute_path": ({"chosen": "ABS"}, "outside_images_root", "is absolute and is outside --images-root"),
    "missing_column": ({"rejected": None}, "missing_image", "rejected is missing"),
}


def bad_file(tmp_path: Path, change: dict) -> Path:
    bad = {"pair_id": "bad", "prompt": "the bad one", "chosen": "a.png", "rejected": "b.png", "split": "train"}
    for k, v in change.items():
        if v is None:
            del bad[k]
        else:
            bad[k] = str(tmp_path / "outside.png") if v == "ABS" else v
    return write_jsonl(tmp_path / "pairs.jsonl", [
        {"pair_id": "good1", "prompt": "first", "chosen": "a.png", "rejected": "b.png", "split": "train"},
        bad,
        {"pair_id": "good2", "prompt": "third", "chosen": "d.png", "rejected": "e.jpg", "split": "train"},
    ])


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_error_mode_stops_and_writes_nothing(ray_local, images: Path, tmp_path: Path, case: str, capsys):
    change, _, words = BAD_ROWS[case]
    out = tmp_path / "ds"
    assert run_job(bad_file(tmp_path, change), images, out) == 1
    err = capsys.readouterr().err
    assert "1 of 3 rows are bad" in err and "line 2 (pair_id 'bad'" in err and words in err, err
    assert "--on-bad-row skip" in err
    assert nothing_written(out)


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_skip_mode_imports_the_rest_and_counts_it(ray_local, images: Path, tmp_path: Path, case: str):
    change, reason, words = BAD_ROWS[case]
    out = tmp_path / "ds"
    assert run_job(bad_file(tmp_path, change), images, out, "--on-bad-row", "skip") == 0
    m = manifest(out)
    assert (m["rows_in_file"], m["rows_imported"], m["rows_skipped"]) == (3, 2, 1)
    assert m["skip_reasons"] == {reason: 1}
    assert m["skipped_examples"][0].startswith("line 2 (pair_id 'bad'") and words in m["skipped_examples"][0]
    assert sorted(read_pairs(out)) == ["good1", "good2"]


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_csv_header_without_needed_columns_is_refused(ray_local, images: Path, tmp_path: Path, mode: str, capsys):
    src = write_csv(tmp_path / "pairs.csv", ["prompt", "good", "bad"], [["a cat", "a.png", "b.png"]])
    out = tmp_path / "ds"
    assert run_job(src, images, out, "--on-bad-row", mode) == 1
    err = capsys.readouterr().err
    assert "columns ['prompt', 'good', 'bad']" in err and "chosen + rejected" in err and "path1 + path2" in err
    assert nothing_written(out)


def test_csv_bad_rows_are_named_by_data_row_and_line(ray_local, images: Path, tmp_path: Path):
    src = tmp_path / "pairs.csv"
    src.write_text('prompt,chosen,rejected\n"a cat",a.png,b.png\n"a dog",nope.png,b.png\n\n"x",a.png\n')
    with pytest.raises(BadRowsError) as exc:
        import_pairs(src, images, tmp_path / "ds", seed=0, splits=[1, 0, 0])
    msg = str(exc.value)
    assert "2 of 3 rows are bad" in msg and "row 2 (line 3) (prompt 'a dog'): chosen: image 'nope.png' not found" in msg
    assert "row 3 (line 5): has 2 fields, the header has 3" in msg


def test_many_bad_rows_listed_first_ten_with_total(ray_local, images: Path, tmp_path: Path):
    rows = [{"prompt": "good", "chosen": "a.png", "rejected": "b.png"}]
    rows += [{"prompt": "", "chosen": "a.png", "rejected": "b.png"} for _ in range(13)]
    out = tmp_path / "ds"
    out.mkdir()
    with pytest.raises(BadRowsError) as exc:
        import_pairs(write_jsonl(tmp_path / "p.jsonl", rows), images, out, on_bad_row="error", seed=0, splits=[1, 0, 0])
    msg = str(exc.value)
    assert "13 of 14 rows are bad" in msg and "line 2: prompt is missing or empty" in msg and "line 11:" in msg
    assert "line 12:" not in msg and "... and 3 more bad rows" in msg and "empty_prompt 13" in msg
    assert str(pickle.loads(pickle.dumps(exc.value))) == msg  # crosses process boundaries intact
    assert nothing_written(out)


def test_skip_mode_counts_every_reason(ray_local, images: Path, tmp_path: Path):
    os.symlink(tmp_path / "outside.png", images / "link.png")  # inside the root, pointing out of it
    good = {"prompt": "ok", "chosen": "a.png", "rejected": "b.png", "split": "test"}
    rows = [
        {**good, "pair_id": "g1"},
        "{not json",
        "[1, 2]",
        {**good, "pair_id": "n5", "num_perturbations": 5},
        {**good, "pair_id": "dev", "split": "dev"},
        {**good, "pair_id": "rel", "relations": {"objects": [{"colour": "gold", "shape": "circle"}], "relations": []}},
        {**good, "pair_id": "g1"},  # duplicate id
        {**good, "pair_id": "lnk", "rejected": "link.png"},
        {**good, "pair_id": "dir", "chosen": "sub"},
        {**good, "pair_id": "two", "path1": "a.png", "path2": "b.png"},
        {**good, "pair_id": "g2", "chosen": "sub/../d.png", "num_perturbations": 3},  # '..' that stays inside is fine
    ]
    out = tmp_path / "ds"
    out.mkdir()
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    info = import_pairs(src, images, out, on_bad_row="skip", seed=0, splits=[0.9, 0.05, 0.05])
    assert info["skip_reasons"] == {
        "bad_json": 1, "not_an_object": 1, "bad_num_perturbations": 1, "bad_split": 1, "bad_relations": 1,
        "duplicate_pair_id": 1, "outside_images_root": 1, "not_a_file": 1, "ambiguous_images": 1,
    }
    assert (info["rows_in_file"], info["rows_imported"], info["rows_skipped"]) == (11, 2, 9)
    assert info["skipped_examples"][0].startswith("line 2: not valid JSON")
    rows = read_pairs(out)
    assert sorted(rows) == ["g1", "g2"] and rows["g2"]["chosen_image"] == (images / "d.png").read_bytes()
    assert not (out / "train").exists()  # every good row asked for "test"


def test_json_array_and_all_rows_bad(ray_local, images: Path, tmp_path: Path):
    src = tmp_path / "hps.json"
    src.write_text(json.dumps([
        {"prompt": "a", "path1": "a.png", "path2": "nope.png"},
        {"prompt": "b", "path1": "notes.png", "path2": "a.png"},
    ]))
    out = tmp_path / "ds"
    out.mkdir()
    with pytest.raises(BadRowsError) as exc:
        import_pairs(src, images, out, on_bad_row="skip", seed=0, splits=[1, 0, 0])
    msg = str(exc.value)
    assert "all 2 rows are bad" in msg and "item 1 (prompt 'a'): rejected: image 'nope.png' not found" in msg
    assert "item 2 (prompt 'b'): chosen: image 'notes.png' does not decode" in msg
    assert nothing_written(out)


@pytest.mark.parametrize("name, text, words", [
    ("pairs.txt", "prompt,chosen,rejected\n", "unknown import format '.txt'"),
    ("pairs.jsonl", "", "no rows"),
    ("pairs.jsonl", "\n\n", "no rows"),
    ("pairs.csv", "prompt,chosen,rejected\n", "no rows"),
    ("pairs.csv", "prompt,chosen,prompt\nx,a.png,y\n", "repeats column(s) ['prompt']"),
    ("pairs.jsonl", '{"prompt": "x", "left": "a.png"}\n', "the rows have columns ['prompt', 'left']"),
])
def test_unusable_files_are_refused(images: Path, tmp_path: Path, name: str, text: str, words: str):
    src = tmp_path / name
    src.write_text(text)
    with pytest.raises(ImportFileError) as exc:
        import_pairs(src, images, tmp_path / "ds", seed=0, splits=[1, 0, 0])
    assert words in str(exc.value) and str(src) in str(exc.value)
    with pytest.raises(ImportFileError, match="import file not found"):
        import_pairs(tmp_path / "missing.jsonl", images, tmp_path / "ds", seed=0, splits=[1, 0, 0])
    with pytest.raises(ImportFileError, match="--images-root is not a folder"):
        import_pairs(src, tmp_path / "no-such-dir", tmp_path / "ds", seed=0, splits=[1, 0, 0])


def test_assign_split_is_seeded_and_follows_fractions():
    ids = [f"import-{i:07d}" for i in range(4000)]
    assert [assign_split(3, i, [0.8, 0.1, 0.1]) for i in ids] == [assign_split(3, i, [0.8, 0.1, 0.1]) for i in ids]
    assert [assign_split(3, i, [0.8, 0.1, 0.1]) for i in ids] != [assign_split(4, i, [0.8, 0.1, 0.1]) for i in ids]
    share = {s: sum(assign_split(0, i, [0.8, 0.1, 0.1]) == s for i in ids) / len(ids) for s in SPLITS}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    assert {assign_split(0, i, [1, 0, 0]) for i in ids[:200]} == {"train"}
    assert {assign_split(0, i, [0, 0, 1]) for i in ids[:200]} == {"test"}


def test_image_changed_after_validation_stops_the_write(images: Path):
    """Pass 2 re-reads each image and refuses bytes other than the ones pass 1 validated."""
    good_sha = hashlib.sha256((images / "a.png").read_bytes()).hexdigest()
    pair = {"pair_id": "p", "prompt": "x", "source": "import", "split": "train", "chosen_path": "a.png",
            "rejected_path": "b.png", "chosen_sha256": good_sha, "rejected_sha256": good_sha}  # b.png's bytes differ
    with pytest.raises(ImageChangedError, match=r"'b.png' \(pair p\) changed while importing") as exc:
        load_pairs_batch(pa.Table.from_pylist([pair]), str(images))
    assert str(pickle.loads(pickle.dumps(exc.value))) == str(exc.value)
    pair["rejected_sha256"] = hashlib.sha256((images / "b.png").read_bytes()).hexdigest()
    table = load_pairs_batch(pa.Table.from_pylist([pair]), str(images))
    assert table.schema.equals(PAIR_SCHEMA)
    assert table.column("rejected_image")[0].as_py() == (images / "b.png").read_bytes()
