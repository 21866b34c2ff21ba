"""Nothing lost, nothing trusted blindly (issue 17), the fast part: damaged datasets refused with one message,
atomic writes, torn metrics lines, resume that refuses a changed config, safetensors-only loading, letterboxing.

Unit tier except the importer case (ray). No job here starts Ray: every refusal happens before it.
The chaos tier (killed actors, a hung sampler, a SIGKILLed driver resumed until done) is tests/test_chaos.py.

Run: .venv/bin/python -m pytest tests/test_integrity.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline.dataset_io import (DatasetError, PAIR_SCHEMA, check_dataset, staging_out_dir, publish_out_dir,
                                      write_manifest, write_prompts_jsonl)
from jobs.verify_dataset import main as verify
import spatialrl.atomic as atomic
from spatialrl.config import REPO_ROOT, ConfigError
from spatialrl.metrics import MetricsFileError, MetricsLogger, read_metrics

PAIRS = {"train": 6, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small dataset in the real format, written with pyarrow (no Ray): two shards in train."""
    from data_pipeline.pairs import make_pair
    from jobs.build_dataset import BuildDatasetConfig
    from spatialrl.config import load_config

    world = load_config(BuildDatasetConfig, REPO_ROOT / "configs/dataset_easy.yaml").world
    root = tmp_path_factory.mktemp("integrity") / "ds"
    for split, n in PAIRS.items():
        rows = [make_pair(i, 0, split, world) for i in range(n)]
        (root / split).mkdir(parents=True)
        half = (n + 1) // 2 if split == "train" else n
        for part, chunk in enumerate((rows[:half], rows[half:])):
            if chunk:
                pq.write_table(pa.Table.from_pylist(chunk, schema=PAIR_SCHEMA), root / split / f"part-{part}.parquet")
    write_prompts_jsonl(root)
    write_manifest(root, {"source": "spatial_world", "seed": 0})
    return root


def damaged(dataset: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    return bad


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def truncate_shard(d: Path) -> Path:
    shard = d / "train" / "part-1.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def drop_column(d: Path) -> Path:
    shard = d / "train" / "part-0.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["rejected_image"]), shard)
    return shard


def corrupt_manifest(d: Path) -> Path:
    mf = d / "manifest.json"
    mf.write_text(mf.read_text()[:40])
    return mf


def manifest_without_counts(d: Path) -> Path:
    mf = d / "manifest.json"
    m = json.loads(mf.read_text())
    del m["counts"]
    mf.write_text(json.dumps(m))
    return mf


def lost_shard(d: Path) -> Path:
    (d / "train" / "part-1.parquet").unlink()
    return d / "train"


def torn_prompts(d: Path) -> Path:
    p = d / "prompts_val.jsonl"
    p.write_bytes(p.read_bytes()[:-30])
    return p


DAMAGE = {
    "truncated shard": (truncate_shard, "not a readable Parquet file"),
    "dropped column": (drop_column, "missing column(s) ['rejected_image']"),
    "corrupt manifest": (corrupt_manifest, "not valid JSON"),
    "manifest without counts": (manifest_without_counts, "no 'counts'"),
    "lost shard": (lost_shard, "hold 3 pairs but"),
    "torn prompts file": (torn_prompts, "torn line"),
}


def test_a_whole_dataset_passes_the_check(dataset, capsys):
    manifest = check_dataset(dataset)
    assert {s: c["pairs"] for s, c in manifest["counts"].items()} == PAIRS
    assert verify(["--data", str(dataset), "--check"]) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize("case", list(DAMAGE))
def test_verify_check_names_the_damaged_file_and_the_fix(case, dataset, tmp_path, capsys):
    make, what = DAMAGE[case]
    bad = damaged(dataset, tmp_path)
    where = make(bad)
    assert verify(["--data", str(bad), "--check"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(where) in line and what in line, line
    assert "rebuild" in line or "rewrite" in line  # the fix


def test_every_job_that_reads_a_dataset_refuses_it_before_ray(dataset, tmp_path, capsys):
    import ray

    from jobs.eval_reward import main as eval_reward
    from jobs.train_reward import main as train_reward

    ray_before = ray.is_initialized()  # another test's session Ray may be up; the jobs must not start one

    bad = damaged(dataset, tmp_path)
    shard = drop_column(bad)
    assert train_reward(["--config", "configs/reward_tiny.yaml", "--data", str(bad), "--out", str(tmp_path / "rm")]) == 2
    assert str(shard) in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rm").exists()
    assert eval_reward(["--checkpoint", str(tmp_path / "nowhere"), "--data", str(bad)]) == 2
    assert str(shard) in one_error_line(capsys.readouterr().err)
    assert ray.is_initialized() == ray_before


def test_grpo_checks_the_dataset_its_prompts_come_from(dataset, tmp_path, capsys):
    import jobs.grpo as grpo_job

    bad = damaged(dataset, tmp_path)
    shard = truncate_shard(bad)
    args = ["--out", str(tmp_path / "run"), "--set", f"data.prompts={bad / 'prompts_train.jsonl'}",
            "--set", "reward.source=verifier", "--set", "grpo.top_k=1"]
    assert grpo_job.main(args) == 2
    assert str(shard) in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_cli_exit_code_and_message_without_traceback(dataset, tmp_path):
    bad = damaged(dataset, tmp_path)
    corrupt_manifest(bad)
    out = subprocess.run([sys.executable, "-m", "jobs.verify_dataset", "--data", str(bad), "--check"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 2
    assert str(bad / "manifest.json") in one_error_line(out.stderr)


def test_verify_dataset_has_the_common_job_surface(dataset, tmp_path, capsys):
    assert verify(["--data", str(dataset), "--set", "splits=[test]", "--set", "check=true", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "check: true" in printed and "- test" in printed
    assert verify(["--data", str(dataset), "--set", "splits=[nope]"]) == 2
    assert "splits" in capsys.readouterr().err
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"data: {dataset}\ncheck: true\nsplits: [val]\n")
    assert verify(["--config", str(cfg), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == {"val": 2}


def test_sample_refuses_a_prompts_path_that_does_not_exist(tmp_path):
    from jobs.sample import main as sample
    from spatialrl.flux.evaluation import read_prompts

    with pytest.raises(SystemExit, match="prompts file .*missing.jsonl does not exist"):
        sample(["--prompts", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    assert read_prompts("a red circle left of a blue square") == [{"prompt": "a red circle left of a blue square"}]
    torn = tmp_path / "p.jsonl"
    torn.write_text('{"prompt": "a"}\n{"prompt": "b', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.jsonl:2 is not valid JSON"):
        read_prompts(str(torn))


# ---------------------------------------------------------------------------------------- atomic state


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "latest.json"
    atomic.write_json(p, {"step": 1})
    atomic.write_json(p, {"step": 2})
    assert json.loads(p.read_text()) == {"step": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["latest.json"]  # no temp file left


def test_publish_dir_keeps_the_old_folder_until_the_new_one_is_in(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "w.safetensors").write_text("old")
    stage = atomic.staging_dir(final)
    (stage / "w.safetensors").write_text("new")
    assert (final / "w.safetensors").read_text() == "old"  # untouched while the new one is built
    atomic.publish_dir(stage, final)
    assert (final / "w.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    # a crash between the two renames: final moved aside, the new one not yet in -> recover_dir puts it back
    os.replace(final, tmp_path / f"{atomic.OLD_PREFIX}final-x")
    assert atomic.recover_dir(final) and (final / "w.safetensors").read_text() == "new"


def test_dataset_overwrite_keeps_the_old_dataset_until_the_new_one_is_complete(dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    with pytest.raises(DatasetError, match="--overwrite"):
        staging_out_dir(out, overwrite=False)
    stage = staging_out_dir(out, overwrite=True)
    assert check_dataset(out)  # a failed build would leave this dataset as it was
    shutil.copytree(dataset / "val", stage / "val")
    write_prompts_jsonl(stage)
    write_manifest(stage, {"source": "spatial_world"})
    publish_out_dir(stage, out)
    assert {s: c["pairs"] for s, c in check_dataset(out)["counts"].items()} == {"train": 0, "val": 2, "test": 0}


def test_a_torn_last_metrics_line_is_dropped_and_never_glued_to_the_next(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # a crash in the middle of the second append
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}]
    logger = MetricsLogger(path, dashboard=False)
    logger.log(2, {"loss": 0.25})
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    logger.truncate_after(1)
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # damage in the middle is not a crash: say so
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2"):
        read_metrics(path)


# --------------------------------------------------------------------------------------------- resume


def test_resume_config_check_lists_the_meaningful_changes(tmp_path):
    from spatialrl.config import check_resume_config, dump_yaml, load_config
    from spatialrl.grpo.config import GRPOJobConfig
    from jobs.grpo import RESUME_SAFE

    sets = ["data.prompts=" + str(REPO_ROOT / "configs/grpo_demo.yaml"), "reward.source=verifier"]
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(load_config(GRPOJobConfig, overrides=sets)))
    more = load_config(GRPOJobConfig, overrides=sets + ["grpo.steps=40", "cluster.sampler.count=2"])
    assert check_resume_config(saved, more, safe=RESUME_SAFE) == ["grpo.steps: 4 -> 40", "cluster.sampler.count: 1 -> 2"]
    changed = load_config(GRPOJobConfig, overrides=sets + ["grpo.top_k=2", "learner.lr=0.5"])
    with pytest.raises(ConfigError, match=r"learner\.lr: 0.0003 -> 0.5; grpo\.top_k: 6 -> 2\. .* --allow-change grpo.top_k"):
        check_resume_config(saved, changed, safe=RESUME_SAFE)
    assert len(check_resume_config(saved, changed, safe=RESUME_SAFE, allow=["grpo.top_k", "learner.*"])) == 2


def test_grpo_resume_refuses_a_changed_config_and_an_empty_folder(tmp_path, capsys):
    import jobs.grpo as grpo_job

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle left of a blue square\n")
    run = tmp_path / "run"
    base = ["--out", str(run), "--set", f"data.prompts={prompts}", "--set", "reward.source=verifier",
            "--set", "grpo.top_k=1"]
    assert grpo_job.main(base + ["--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not run.exists()
    from spatialrl.config import dump_yaml, load_config
    from spatialrl.grpo.config import GRPOJobConfig

    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config(GRPOJobConfig, overrides=[
        f"data.prompts={prompts}", "reward.source=verifier", "grpo.top_k=1"])))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest.json").write_text('{"path": "step_00002", "step": 2}')
    saved = (run / "config.yaml").read_text()
    assert grpo_job.main(base + ["--resume", "--set", "grpo.top_k=0", "--set", "sampler.noise_level=0.5"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "grpo.top_k: 1 -> 0" in err and "sampler.noise_level" in err and "--allow-change" in err
    assert (run / "config.yaml").read_text() == saved  # nothing rewritten


def test_train_reward_resume_without_a_run_is_an_error(dataset, tmp_path, capsys):
    import ray

    from jobs.train_reward import main as train_reward

    ray_before = ray.is_initialized()

    out = tmp_path / "rm"
    assert train_reward(["--config", "configs/reward_tiny.yaml", "--data", str(dataset), "--out", str(out),
                         "--resume"]) == 2
    assert "holds no earlier run" in one_error_line(capsys.readouterr().err)
    assert ray.is_initialized() == ray_before


# ------------------------------------------------------------------------------------------ safe loading


def test_pickled_weights_are_refused_unless_the_risk_is_named(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from spatialrl.models.loader import (ALLOW_PICKLE_ENV, UnsafeWeightsError, check_safe_weights, load_vl_model,
                                         resolve_model_path)

    folder = tmp_path / "qwen"
    shutil.copytree(resolve_model_path("tiny", "qwen"), folder)
    for st in folder.glob("*.safetensors"):
        torch.save(load_file(st), folder / "pytorch_model.bin")
        st.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(UnsafeWeightsError, match=rf"pytorch_model.bin.*{ALLOW_PICKLE_ENV}=1"):
        load_vl_model(folder)
    lora = tmp_path / "lora"
    lora.mkdir()
    torch.save({}, lora / "pytorch_lora_weights.bin")
    with pytest.raises(UnsafeWeightsError):
        check_safe_weights(lora)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")  # a safetensors file beside it is what loads
    assert check_safe_weights(lora) == lora
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    assert load_vl_model(folder).config.model_type == "qwen2_5_vl"


# ------------------------------------------------------------------------------------- image sizes


def test_non_square_images_are_letterboxed_never_stretched():
    from spatialrl.reward.prompt import square_image

    img = Image.new("RGB", (56, 28), (255, 0, 0))
    out = np.asarray(square_image(img, 56))
    assert out.shape == (56, 56, 3)
    assert (out[14:42, :, 0] == 255).all() and (out[:14] == 0).all() and (out[42:] == 0).all()
    same = Image.new("RGB", (28, 28), (0, 0, 255))
    assert np.asarray(square_image(same, 56)).shape == (56, 56, 3)


@pytest.mark.ray
def test_import_refuses_a_pair_of_two_sizes(ray_local, tmp_path, capsys):
    from jobs.build_dataset import main as build

    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(root / "a.png")
    Image.new("RGB", (32, 32), (0, 200, 0)).save(root / "b.png")
    Image.new("RGB", (48, 32), (0, 0, 200)).save(root / "c.png")
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "one", "chosen": "a.png", "rejected": "b.png"}) + "\n"
                   + json.dumps({"prompt": "two", "chosen": "a.png", "rejected": "c.png"}) + "\n")
    out = tmp_path / "out"
    assert build(["--import", str(src), "--images-root", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "32x32" in err and "48x32" in err and "never stretched" in err
    assert not out.exists()
    assert build(["--import", str(src), "--images-root", str(root), "--out", str(out), "--on-bad-row", "skip"]) == 0
    m = check_dataset(out)
    assert m["rows_imported"] == 1 and m["skip_reasons"] == {"size_mismatch": 1}
