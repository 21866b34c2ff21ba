"""jobs.evaluate end to end on the tiny models, one run per benchmark, each writing its report (slow tier), and the
report opened in a real headless Chromium that must render every embedded image.

Chromium: found on PATH (chromium, chromium-browser, google-chrome); when it is missing and the tests run as root
with apt-get, the fixture installs Debian's `chromium` once (`apt-get install -y chromium`); otherwise it skips
and says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from spatialrl.metrics import read_metrics

from test_benchmarks import GENEVAL_ROWS, WORLD_ROWS, write_dpg, write_jsonl, write_tiif, write_unigen

pytestmark = pytest.mark.slow

TINY = ["--model", "tiny-pretrained", "--limit", "2", "--set", "generation.steps=3",
        "--set", "generation.max_sequence_length=96", "--set", "generation.true_cfg_scale=3",
        "--set", "chunk_prompts=1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_torch_thread):
    """A random diffusers-format LoRA for the toy generator and an untrained SpatialScore checkpoint."""
    import torch
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig, flux_lora_config
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel

    root = tmp_path_factory.mktemp("models")
    s = FluxSampler(FluxSamplerConfig(model="tiny-pretrained", resolution=64, lora_rank=4, lora_alpha=8))
    s.init_lora(seed=0)
    state = get_peft_model_state_dict(s.transformer)
    g = torch.Generator().manual_seed(1)
    state = {k: (0.3 * torch.randn(v.shape, generator=g) if ".lora_B." in k else v.clone()) for k, v in state.items()}
    FluxPipeline.save_lora_weights(root / "lora", transformer_lora_layers=state,
                                   transformer_lora_adapter_metadata=flux_lora_config(4, 8).to_dict())
    ckpt = SpatialRewardModel(RewardModelConfig(lora_rank=4), seed=1).save_pretrained(root / "rm")
    return {"lora": str(root / "lora"), "spatialscore": str(ckpt)}


def run_eval(out, *args):
    from jobs.evaluate import main

    assert main([*args, *TINY, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and (out / "settings.yaml").is_file()
    logged = {k for r in read_metrics(out / "metrics.jsonl") for k in r}  # the one metrics path
    assert {"eval/base/images", "eval/base/images_per_s"} <= logged, logged
    return rows


@pytest.fixture(scope="module")
def world_run(ray_local, models, tmp_path_factory):
    """The full report: base vs LoRA, SpatialScore + verifier + VLM, on the spatial world's prompts."""
    root = tmp_path_factory.mktemp("world")
    prompts = write_jsonl(root / "prompts_test.jsonl", WORLD_ROWS)
    out = root / "out"
    rows = run_eval(out, "--benchmark", "spatialworld", "--prompts", str(prompts), "--lora", models["lora"],
                    "--spatialscore", models["spatialscore"], "--images-per-prompt", "2", "--seed", "5")
    return out, rows


def test_spatialworld_base_vs_lora_report(world_run):
    out, rows = world_run
    assert len(rows) == 2 * 2 * 2  # 2 prompts x 2 images x (base, lora)
    base = [r for r in rows if r["variant"] == "base"]
    lora = [r for r in rows if r["variant"] == "lora"]
    assert [r["seed"] for r in base] == [r["seed"] for r in lora] == [5, 6, 7, 8]  # paired, seed + p*K + k
    for r in rows:
        assert set(r["scores"]) >= {"spatialscore", "verifier/relation_accuracy", "vlm", "vlm/soft"}
        assert (out / r["file"]).is_file()
    a = np.asarray(Image.open(out / base[0]["file"]))
    b = np.asarray(Image.open(out / lora[0]["file"]))
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)  # the LoRA changes the picture
    page = (out / "report.html").read_text()
    assert "Reward vs judge" in page and page.count("data:image/png;base64,") >= 3  # grids + the scatter
    assert "gain (lora - base)" in (out / "report.md").read_text()
    import yaml

    settings = yaml.safe_load((out / "settings.yaml").read_text())
    assert settings["generation"]["seed"] == 5 and settings["judges"]["judges"] == ["verifier", "vlm", "spatialscore"]


def test_geneval_end_to_end_in_genevals_layout(ray_local, tmp_path):
    from test_benchmarks import geneval_listing

    prompts = write_jsonl(tmp_path / "evaluation_metadata.jsonl", GENEVAL_ROWS)
    rows = run_eval(tmp_path / "out", "--benchmark", "geneval", "--prompts", str(prompts), "--images-per-prompt", "2")
    listed = geneval_listing(tmp_path / "out" / "images" / "base")
    assert len(listed) == len(rows) == 4 and [m for _, m in listed] == [GENEVAL_ROWS[0]] * 2 + [GENEVAL_ROWS[1]] * 2
    assert {c for r in rows for c in r["categories"]} == {"single_object", "counting"}


def test_dpg_end_to_end_grids(ray_local, tmp_path):
    rows = run_eval(tmp_path / "out", "--benchmark", "dpg", "--prompts", str(write_dpg(tmp_path / "dpg")))
    assert len(rows) == 8 and {r["file"] for r in rows} == {"images/base/apple1.png", "images/base/bird7.png"}
    assert Image.open(tmp_path / "out" / "images" / "base" / "apple1.png").size == (128, 128)
    apple = next(r for r in rows if r["item_id"] == "apple1")
    assert len(apple["questions"]) == 4 and "vlm/cat/relation/spatial" in apple["scores"]
    assert "relation/spatial" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("length", ["short", "long"])
def test_tiif_end_to_end(ray_local, tmp_path, length):
    write_tiif(tmp_path)
    rows = run_eval(tmp_path / "out", "--benchmark", "tiif", "--prompts", str(tmp_path / "test_prompts"),
                    "--prompt-length", length)
    assert len(rows) == 2  # TIIF: one image per prompt
    assert (tmp_path / "out" / "images" / "base" / "2d_spatial_relation" / "base" / f"{length}_description" /
            "1.png").is_file()
    assert [q["expected"] for q in rows[0]["questions"]] == ["yes", "no"]


def test_unigenbench_end_to_end_layout_subset(ray_local, tmp_path):
    rows = run_eval(tmp_path / "out", "--benchmark", "unigenbench", "--prompts",
                    str(write_unigen(tmp_path / "test_prompts_en.csv")), "--images-per-prompt", "2",
                    "--subset", "Entity Layout - Three-Dimensional Space")
    assert [r["item_id"] for r in rows] == ["1", "1"]
    assert (tmp_path / "out" / "images" / "base" / "1_1.png").is_file()
    assert "Entity Layout - Three-Dimensional Space" in (tmp_path / "out" / "report.md").read_text()


def test_t2i_compbench_end_to_end(ray_local, tmp_path):
    path = tmp_path / "spatial_val.txt"
    path.write_text("a dog on the left of a cat\na cup on the right of a book\n")
    rows = run_eval(tmp_path / "out", "--benchmark", "t2i-compbench", "--prompts", str(path),
                    "--images-per-prompt", "2")
    assert [r["file"] for r in rows][-1] == "images/base/samples/a cup on the right of a book_000003.png"
    assert all((tmp_path / "out" / r["file"]).is_file() for r in rows)


# ------------------------------------------------------------------------------------------------ the browser


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium():
    found = chromium_binary()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=1200)
        found = chromium_binary()
    if found is None:
        pytest.skip("no Chromium here: install it (Debian/Ubuntu: apt-get install -y chromium) to run the browser test")
    return found


def headless(binary: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_report_renders_its_images_in_headless_chromium(world_run, chromium, tmp_path):
    out, _ = world_run
    page = (out / "report.html").read_text()
    n_images = page.count("<img ")
    assert n_images >= 3
    # a copy of the page that, once loaded, writes each image's decoded width into the DOM
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => { const d = "
                                  "document.createElement('pre'); d.id = 'probe'; d.textContent = JSON.stringify("
                                  "[...document.images].map(i => i.complete ? i.naturalWidth : -1)); "
                                  "document.body.appendChild(d); });</script></body>"))
    dom = headless(chromium, "--dump-dom", probe.as_uri()).stdout
    assert '<pre id="probe">' in dom, dom[-2000:]
    widths = json.loads(dom.split('<pre id="probe">')[1].split("</pre>")[0])
    assert len(widths) == n_images and all(w > 0 for w in widths), widths  # every image decoded and laid out
    shot = tmp_path / "report.png"
    headless(chromium, f"--screenshot={shot}", "--window-size=1100,1800", (out / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1800, 1100)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # images, not a blank or text-only page
