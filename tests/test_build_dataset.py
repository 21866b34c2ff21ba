"""jobs.build_dataset and jobs.verify_dataset end to end on a real local Ray (ray tier)."""

import json

import pyarrow.dataset as pads
import pytest

from data_pipeline.dataset_io import PAIR_SCHEMA
from jobs.build_dataset import main as build, split_sizes
from jobs.verify_dataset import main as verify

pytestmark = pytest.mark.ray


def test_split_sizes_add_up():
    assert split_sizes(80000, [0.9, 0.05, 0.05]) == {"train": 72000, "val": 4000, "test": 4000}
    assert sum(split_sizes(7, [0.5, 0.25, 0.25]).values()) == 7


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "easy"
    assert build(["--config", "configs/dataset_easy.yaml", "--pairs", "80", "--seed", "3", "--out", str(out),
                  "--set", "pairs_per_block=16"]) == 0
    return out


def test_layout_schema_and_manifest(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["world"]["canvas"] == 64
    counts = manifest["counts"]
    assert {s: c["pairs"] for s, c in counts.items()} == {"train": 72, "val": 4, "test": 4}
    for split, c in counts.items():
        table = pads.dataset(str(dataset / split), format="parquet").to_table()
        assert table.schema.names == PAIR_SCHEMA.names
        assert table.num_rows == c["pairs"] and set(table.column("split").to_pylist()) == {split}
        levels = table.column("num_perturbations").to_pylist()
        assert c["by_perturbations"] == {str(k): levels.count(k) for k in sorted(set(levels))}
        lines = (dataset / f"prompts_{split}.jsonl").read_text().splitlines()
        assert len(lines) == c["pairs"]
        first = json.loads(lines[0])
        assert set(first) >= {"prompt", "relations", "objects"} and first["relations"]
    assert (dataset / "preview.png").stat().st_size > 1000
    row = json.loads((dataset / "metrics.jsonl").read_text())  # the build through the one metrics path
    assert row["step"] == 0 and row["dataset/pairs"] == 80 and row["dataset/pairs_per_s"] > 0


def test_same_seed_same_dataset(dataset, tmp_path):
    again = tmp_path / "again"
    assert build(["--config", "configs/dataset_easy.yaml", "--pairs", "80", "--seed", "3", "--out", str(again),
                  "--set", "pairs_per_block=7"]) == 0  # different blocking, same pairs
    a = pads.dataset(str(dataset / "val")).to_table().sort_by("pair_id")
    b = pads.dataset(str(again / "val")).to_table().sort_by("pair_id")
    assert a.equals(b)
    # and in id order across the shards, as the reward trainer streams them (files by name, rows in order)
    import pyarrow.parquet as pq

    for root in (dataset, again):
        shards = sorted((root / "train").glob("*.parquet"))
        ids = [i for f in shards for i in pq.read_table(f).column("pair_id").to_pylist()]
        assert ids == sorted(ids) and len(ids) == 72


def test_verifier_confirms_every_pair(dataset, tmp_path, capsys):
    report_path = tmp_path / "verify.json"
    assert verify(["--data", str(dataset), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["n_checked"] == 80
    assert report["chosen_all_hold"] == 1.0 and report["rejected_exact_violations"] == 1.0
    assert report["chosen_objects_present"] == 1.0
    assert set(report["by_relation_type"]) <= {"left_of", "right_of", "above", "below"}
    assert "chosen_all_hold" in capsys.readouterr().out


def test_verifier_catches_a_swapped_pair(dataset, tmp_path):
    """Swap chosen and rejected in one shard: the verifier must notice (the check can fail)."""
    import pyarrow.parquet as pq
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    shard = sorted((bad / "test").glob("*.parquet"))[0]
    t = pq.read_table(shard)
    cols = {n: t.column(n) for n in t.schema.names}
    cols["chosen_image"], cols["rejected_image"] = cols["rejected_image"], cols["chosen_image"]
    pq.write_table(type(t).from_pydict(cols, schema=t.schema), shard)
    report_path = tmp_path / "v.json"
    assert verify(["--data", str(bad), "--split", "test", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["chosen_all_hold"] < 1.0 and report["rejected_exact_violations"] < 1.0


def test_refuses_to_overwrite(dataset, capsys):
    assert build(["--pairs", "5", "--out", str(dataset)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_not_a_dataset(tmp_path, capsys):
    assert verify(["--data", str(tmp_path)]) == 2
    assert "jobs.build_dataset" in capsys.readouterr().err
