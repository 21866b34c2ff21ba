"""The GPU suite: the `gpu` test tier, then each GRPO role against the plain stack it replaces, in one run.

    bash bench/gpu_suite.sh                 # on a GPU machine: installs what the image lacks, then this module
    bash bench/gpu_suite.sh --cpu-dry-run   # the same code on CPU at tiny shapes (minutes; the default tier runs it)
    python -m bench.gpu_suite --append-from OUT/gpu_suite.md    # add a fetched run's table to bench/RESULTS.md

Parts (`--only`), each timed after a warm-up, the project's path and the plain one alternating in one process:
  tests    `pytest -m gpu tests/test_gpu.py`; with CUDA present a skipped test counts as a failure
  sampler  FluxSampler (SDE with log-probs; ODE; SDE with sampler.compile) vs stock `FluxPipeline.__call__` on the
           same pipeline: FLUX.1-dev's published configs (assets/configs/flux1-dev) with random weights, 512 px
           (dry: the tiny fixture's configs, 32 px); images/s and MFU (transformer FLOPs counted by
           torch.utils.flop_counter over the matmul rate measured in the same run). Checks: ODE = stock latents.
  reward   SpatialScorer (chunks sized by memory) vs a plain transformers loop (Qwen2_5_VLForConditionalGeneration
           forward with logits at the preset's fixed batch, the head on the last hidden state) at Qwen2.5-VL-7B
           shapes, random weights, 448 px; images/s. Check: the two give the same scores.
  learner  one GRPO train_step (GRPOLearner: DeepSpeed, LoRA fwd + bwd over the trained timesteps, flash SDPA
           pinned) vs a plain PEFT step (diffusers add_adapter + torch AdamW, the same number of fwd + bwd passes
           at the same shapes); sample-steps/s and peak memory. Check: on-policy ratio exactly 1.
  grpo     one `jobs.grpo` run with all three roles on one GPU (num_gpus 0.3 each) on the shipped toy models:
           seconds per step and GPU busy share (nvidia-smi, sampled during steps 2..N): the loop's own overhead.
Random weights and the toy GRPO models mean the numbers measure speed, not quality. The text encoders are the
published shapes too, but read the tiny fixture's tokenizers (their vocabularies, which the embedding sizes follow).

Writes OUT/gpu_suite.json and OUT/gpu_suite.md (a markdown table); on a GPU run also appends the table to
bench/RESULTS.md. Exit status 1 when any check or part fails (never a silent skip), 0 otherwise; the issue's
goals (sampler >= 1.3x, reward >= 2x, learner >= 1.3x, GPU busy >= 85%) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from spatialrl.config import REPO_ROOT

PARTS = ("tests", "sampler", "reward", "learner", "grpo")
GOALS = {"sampler": 1.3, "reward": 2.0, "learner": 1.3, "grpo_busy": 0.85}
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"


def shapes(dry: bool) -> dict:
    from spatialrl.grpo.memory import FLUX_DEV, QWEN_7B
    from spatialrl.models.loader import resolve_model_path

    if dry:
        return dict(flux=resolve_model_path("tiny", "flux"), qwen=resolve_model_path("tiny", "qwen"), resolution=32,
                    steps=4, batch=2, max_sequence_length=32, rounds=1, reward_images=8, reward_batch=2,
                    image_size=56, learner_batch=2, dtype="float32", lora_rank=4, grpo_steps=2)
    # configs/grpo_flux_dev.yaml's 10 denoising steps (the design notes' anchors used 16; MFU and the ratios do
    # not depend on it), batch 8 (stock FluxPipeline's images/s flattens from there: 1.17 at 8, 1.19 at 24)
    return dict(flux=FLUX_DEV, qwen=QWEN_7B, resolution=512, steps=10, batch=8, max_sequence_length=512, rounds=2,
                reward_images=64, reward_batch=8, image_size=448, learner_batch=3, dtype="bfloat16", lora_rank=64,
                grpo_steps=4)


# ------------------------------------------------------------------------------------------------ helpers


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul FLOP/s measured here (the MFU denominator): square matmuls for about a second."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(paths: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each path over `rounds` after one warm-up call, the paths alternating."""
    times = {k: [] for k in paths}
    for rnd in range(rounds + 1):
        for name, fn in paths.items():
            sync()
            t0 = time.perf_counter()
            fn(rnd)
            sync()
            if rnd:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def random_flux_pipeline(folder: Path, dtype: torch.dtype, device: torch.device):
    """A FluxPipeline with random weights at the shapes of `folder`'s configs (transformer, vae, CLIP, T5,
    scheduler), built on `device`; tokenizers from the tiny fixture, the text encoders' vocabularies sized to them."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from spatialrl.models.loader import load_flux_pipeline

    tiny = load_flux_pipeline("tiny")
    clip_tok, t5_tok = tiny.tokenizer, tiny.tokenizer_2
    clip_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    clip_cfg.update(dict(vocab_size=len(clip_tok), bos_token_id=clip_tok.bos_token_id,
                         eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
    t5_cfg = T5Config.from_pretrained(folder / "text_encoder_2")
    t5_cfg.update(dict(vocab_size=len(t5_tok)))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the run's dtype: 17B fp32 parameters would need 68 GB first
    try:
        with torch.device(device):
            torch.manual_seed(0)
            modules = dict(
                transformer=FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder / "transformer")),
                vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                text_encoder=CLIPTextModel(clip_cfg), text_encoder_2=T5EncoderModel(t5_cfg))
    finally:
        torch.set_default_dtype(default)
    for m in modules.values():
        m.eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(folder / "scheduler"))
    return FluxPipeline(scheduler=scheduler, tokenizer=clip_tok, tokenizer_2=t5_tok, **modules)


PROMPT = ("a small red circle to the left of a large blue square, above a green triangle that is behind a yellow "
          "star, with an orange square below the circle and a purple circle to the right of the star")


# ------------------------------------------------------------------------------------------------- parts


def part_tests(dry: bool, out: Path) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:  # a bare GPU image: run the tier's test functions (they take no fixtures) directly
        return run_tier_without_pytest()
    xml = out / "gpu_tier.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    rc = subprocess.run(cmd, cwd=REPO_ROOT).returncode
    import xml.etree.ElementTree as ET

    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cuda = torch.cuda.is_available()
    return {"ok": tier_ok(rc, counts, cuda), "rc": rc, **counts,
            "check": "no failures" + (", none skipped" if cuda else "")}


def run_tier_without_pytest() -> dict:
    import importlib
    import types

    class _Marks:  # tests/test_gpu.py only stores marks in `pytestmark`; their decorators are never needed here
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    stub = types.ModuleType("pytest")
    stub.mark = _Marks()
    sys.modules.setdefault("pytest", stub)
    mod = importlib.import_module("tests.test_gpu")
    tests = [getattr(mod, n) for n in dir(mod) if n.startswith("test_") and callable(getattr(mod, n))]
    failures, cuda = [], torch.cuda.is_available()
    for fn in tests if cuda else []:
        try:
            fn()
        except Exception:
            traceback.print_exc()
            failures.append(fn.__name__)
    counts = {"tests": len(tests), "failures": len(failures), "errors": 0, "skipped": 0 if cuda else len(tests)}
    return {"ok": tier_ok(1 if failures else 0, counts, cuda), "rc": None, **counts,
            "check": f"run without pytest (not installed); failed: {failures or 'none'}"}


def tier_ok(rc: int, counts: dict, cuda: bool) -> bool:
    """The gpu tier passes when nothing failed and, with CUDA present, nothing was skipped either (a skip there
    means a test could not see the GPU: a failure, never a pass). Without CUDA every test skips."""
    if rc not in (0, 1) or counts["failures"] or counts["errors"] or not counts["tests"]:
        return False
    return not (cuda and counts["skipped"]) and rc == 0


def part_sampler(dry: bool, sh: dict, compile_sampler: bool) -> dict:
    from spatialrl.flux.sampler import DTYPES, FluxSampler, FluxSamplerConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[sh["dtype"]]
    pipe = random_flux_pipeline(Path(sh["flux"]), dtype, device)
    base = dict(model="given", resolution=sh["resolution"], num_steps=sh["steps"], group_size=sh["batch"],
                batch_size=sh["batch"], max_sequence_length=sh["max_sequence_length"], dtype=sh["dtype"],
                lora_rank=sh["lora_rank"], lora_alpha=2 * sh["lora_rank"], noise_level=0.9)
    sampler = FluxSampler(FluxSamplerConfig(**base), pipe=pipe)
    sampler.init_lora(seed=0)  # rollouts run with the LoRA (B = 0): the stock pipeline runs the same modules
    b, res, steps = sh["batch"], sh["resolution"], sh["steps"]

    def stock(seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(b)]
        return pipe(PROMPT, height=res, width=res, num_inference_steps=steps, guidance_scale=3.5,
                    num_images_per_prompt=b, generator=gens, output_type="latent",
                    max_sequence_length=sh["max_sequence_length"]).images

    # check: the ODE path reproduces the stock latents (exact in fp32; bf16 rounds the same ops alike)
    ref = stock(7)
    ode = sampler.sample([PROMPT], seed=7, noise_level=0.0, decode=False).latents[:, -1].to(ref.device)
    # bf16: the sampler keeps latents in fp32 between steps, the pipeline in bf16; a relative RMS error of 10%
    # still catches a wrong schedule, guidance or packing (those give errors of order 1)
    ode_dev = float((ode.float() - ref.float()).abs().max())
    rel = float((ode.float() - ref.float()).norm() / ref.float().norm())
    ode_ok = ode_dev == 0.0 if dtype == torch.float32 else rel <= 0.1

    def stock_np(seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(b)]
        return pipe(PROMPT, height=res, width=res, num_inference_steps=steps, guidance_scale=3.5,
                    num_images_per_prompt=b, generator=gens, output_type="np",
                    max_sequence_length=sh["max_sequence_length"]).images

    paths = {"stock FluxPipeline.__call__": stock_np,
             "FluxSampler ODE": lambda s: sampler.sample([PROMPT], seed=s, noise_level=0.0),
             "FluxSampler SDE + log-probs": lambda s: sampler.sample([PROMPT], seed=s)}
    secs = timed(paths, sh["rounds"])
    compiled_ok, compile_s = True, None
    if compile_sampler:
        fast = FluxSampler(FluxSamplerConfig(**base, compile=True), pipe=pipe)
        fast._adapter, fast._lora_keys = sampler._adapter, sampler._lora_keys  # the same transformer and LoRA
        t0 = time.perf_counter()
        tc = fast.sample([PROMPT], seed=3)
        compile_s = time.perf_counter() - t0
        te = sampler.sample([PROMPT], seed=3)
        lp_dev = float((tc.log_probs - te.log_probs).abs().max())
        compiled_ok = lp_dev <= (1e-6 if dtype == torch.float32 else 5e-3) and torch.equal(
            fast.recompute_log_probs(tc), tc.log_probs)
        secs.update(timed({"FluxSampler SDE + log-probs, compiled": lambda s: fast.sample([PROMPT], seed=s)},
                          sh["rounds"]))
    # MFU: transformer FLOPs per image (all steps; VAE decode not counted) over the matmul rate measured here
    x = torch.randn(1, (res // 16) ** 2, 64, device=device)
    emb, pool, text_ids = sampler.encode([PROMPT])
    from spatialrl.flux.math import latent_image_ids

    h = sampler.latent_size(res)[0] // 2
    ids = latent_image_ids(h, h, device=device, dtype=emb.dtype)
    with torch.no_grad():
        per_forward = count_flops(lambda: sampler.velocity(x, torch.tensor(500.0, device=device), emb, pool,
                                                           text_ids, ids))
    peak = matmul_rate(device, dtype)
    rows = []
    stock_ips = b / secs["stock FluxPipeline.__call__"]
    for name, s in secs.items():
        ips = b / s
        rows.append({"role": "sampler", "path": name, "value": ips, "unit": "images/s",
                     "vs_plain": ips / stock_ips, "mfu": ips * per_forward * steps / peak})
    del sampler, pipe
    free()
    ok = ode_ok and compiled_ok
    return {"ok": ok, "rows": rows, "check": f"ODE = stock latents (max dev {ode_dev:.3g}, relative RMS {rel:.3g})"
            + (f"; compiled log-probs ok, compile {compile_s:.0f} s" if compile_sampler else ""),
            "flops_per_forward": per_forward, "matmul_flops_per_s": peak,
            "goal": GOALS["sampler"], "best_vs_plain": max(r["vs_plain"] for r in rows if "FluxSampler" in r["path"])}


def part_reward(dry: bool, sh: dict) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from data_pipeline.pairs import make_pair
    from data_pipeline.world import WorldConfig
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel, apply_lora
    from spatialrl.reward.prompt import load_processor
    from spatialrl.reward.scorer import SpatialScorer, encode_items
    from spatialrl.models.loader import resolve_model_path

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if sh["dtype"] == "bfloat16" else torch.float32
    cfg = Qwen2_5_VLConfig.from_pretrained(sh["qwen"])
    tiny = json.loads((resolve_model_path("tiny", "qwen") / "config.json").read_text())
    cfg.update({k: v for k, v in tiny.items() if k.endswith("token_id")})  # the tiny processor's special tokens
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            lm = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    rcfg = RewardModelConfig(backbone="tiny", image_size=sh["image_size"], dtype=sh["dtype"])
    model = SpatialRewardModel(rcfg, backbone=apply_lora(lm.model, rcfg))
    processor = load_processor("tiny", sh["image_size"])
    budget = None
    if device.type == "cuda":
        free_b, _ = torch.cuda.mem_get_info()
        budget = int(0.6 * free_b)
    else:
        from spatialrl.reward.memory import scoring_bytes_per_row

        budget = 2 * sh["reward_batch"] * scoring_bytes_per_row(lm.model.config, 200, sh["image_size"], 4)
    scorer = SpatialScorer(model, processor, device=str(device), max_batch_bytes=budget)
    world = WorldConfig(canvas=max(64, sh["image_size"]))
    pairs = [make_pair(i, 0, "train", world) for i in range(sh["reward_images"] // 2)]
    from data_pipeline.dataset_io import decode_image

    prompts = [p["prompt"] for p in pairs] * 2
    images = [decode_image(p["chosen_image"]) for p in pairs] + [decode_image(p["rejected_image"]) for p in pairs]
    head = model.head

    @torch.no_grad()
    def plain(_=0):
        out = []
        for s in range(0, len(prompts), sh["reward_batch"]):
            enc = encode_items(processor, sh["image_size"], prompts[s:s + sh["reward_batch"]],
                               images[s:s + sh["reward_batch"]])
            enc = {k: v.to(device) for k, v in enc.items()}
            o = lm(**enc, output_hidden_states=True, use_cache=False)
            out.append(head(o.hidden_states[-1][:, -1]).float()[:, 0].cpu().numpy())
        return np.concatenate(out)

    got, ref = scorer.score(prompts, images), plain()
    spread = float(np.std(ref)) + 1e-6
    dev = float(np.abs(got - ref).max())
    # fp32: the same numbers up to summation order; bf16: chunk composition changes rounding, so a loose sanity
    # bound (a wrong pooling position or a dropped processor key moves scores by their whole spread)
    ok = dev <= (1e-4 if dtype == torch.float32 else 0.05 * float(np.abs(ref).max()) + 0.05 * spread)
    secs = timed({"plain transformers loop": plain, "SpatialScorer": lambda _: scorer.score(prompts, images)},
                 sh["rounds"])
    n = len(prompts)
    plain_ips = n / secs["plain transformers loop"]
    rows = [{"role": "reward", "path": f"plain transformers loop (batch {sh['reward_batch']}, with logits)",
             "value": plain_ips, "unit": "images/s", "vs_plain": 1.0},
            {"role": "reward", "path": f"SpatialScorer (chunks of {scorer.last_chunk_rows} by memory)",
             "value": n / secs["SpatialScorer"], "unit": "images/s", "vs_plain": n / secs["SpatialScorer"] / plain_ips}]
    del scorer, model, lm
    free()
    return {"ok": ok, "rows": rows, "check": f"scores equal (max dev {dev:.3g}, score spread {spread:.3g})",
            "goal": GOALS["reward"], "best_vs_plain": rows[1]["vs_plain"]}


def part_learner(dry: bool, sh: dict, compile_learner: bool) -> dict:
    from spatialrl.flux.math import latent_image_ids
    from spatialrl.flux.sampler import DTYPES, FluxSamplerConfig, flux_lora_config
    from spatialrl.grpo.learner import GRPOLearner, GRPOLearnerConfig, TrainSelection, _free_port
    from spatialrl.grpo.math import trained_steps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[sh["dtype"]]
    b, res, steps = sh["learner_batch"], sh["resolution"], sh["steps"]
    n_steps = len(trained_steps(steps, 0.99))
    rank = sh["lora_rank"]
    # plain PEFT step first, on its own transformer (so each phase's peak memory is its own)
    pipe = random_flux_pipeline(Path(sh["flux"]), dtype, device)
    tr = pipe.transformer
    tr.requires_grad_(False)
    tr.add_adapter(flux_lora_config(rank, 2 * rank))
    params = [p for n, p in tr.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    c = tr.config
    s_img, s_txt = (res // 16) ** 2, sh["max_sequence_length"]
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(b, s_img, 64, generator=g).to(device, dtype),
                  encoder_hidden_states=torch.randn(b, s_txt, c.joint_attention_dim, generator=g).to(device, dtype),
                  pooled_projections=torch.randn(b, c.pooled_projection_dim, generator=g).to(device, dtype),
                  timestep=torch.full((b,), 0.5, device=device, dtype=dtype),
                  guidance=torch.full((b,), 3.5, device=device) if c.guidance_embeds else None,
                  txt_ids=torch.zeros(s_txt, 3, device=device, dtype=dtype),
                  img_ids=latent_image_ids(res // 16, res // 16, device=device, dtype=dtype), return_dict=False)
    target = torch.randn(b, s_img, 64, generator=g).to(device)

    def plain_step(_=0):
        for _j in range(n_steps):
            v = tr(**inputs)[0]
            ((v.float() - target) ** 2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    per_pass = count_flops(lambda: ((tr(**inputs)[0].float() - target) ** 2).mean().backward())
    opt.zero_grad(set_to_none=True)
    peak_reset()
    plain_s = timed({"plain": plain_step}, sh["rounds"])["plain"]
    plain_peak = peak_gib()
    del pipe, tr, opt, params, inputs
    free()
    # the GRPO learner: DeepSpeed engine, the sampler's velocity + sde_step, flash SDPA pinned on CUDA
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    scfg = FluxSamplerConfig(model="given", resolution=res, num_steps=steps, group_size=b, batch_size=b,
                             max_sequence_length=s_txt, dtype=sh["dtype"], lora_rank=rank, lora_alpha=2 * rank,
                             noise_level=0.9, compile=compile_learner)
    pipe = random_flux_pipeline(Path(sh["flux"]), dtype, device)
    learner = GRPOLearner(scfg, GRPOLearnerConfig(clip_range=1e-4), master_port=_free_port(), pipe=pipe)
    traj = learner.policy.sample([PROMPT], seed=0, decode=False)  # on-policy: the learner's own weights
    sel = [TrainSelection(np.arange(b), np.linspace(-1, 1, b).astype(np.float32))]
    first = learner.train_step([traj], sel)
    ratio_ok = first["policy/ratio_max_dev"] == 0.0
    peak_reset()
    grpo_s = timed({"grpo": lambda _: learner.train_step([traj], sel)}, sh["rounds"])["grpo"]
    grpo_peak = peak_gib()
    del learner, pipe
    free()
    work = b * n_steps  # sample-steps per call (every image at every trained timestep)
    peak = matmul_rate(device, dtype)
    rows = [{"role": "learner", "path": "plain PEFT step (add_adapter + AdamW)", "value": work / plain_s,
             "unit": "sample-steps/s", "vs_plain": 1.0, "mfu": work / plain_s * per_pass / b / peak,
             "peak_gib": plain_peak},
            {"role": "learner", "path": "GRPO train_step (DeepSpeed, flash SDPA" + (", compiled)" if compile_learner else ")"),
             "value": work / grpo_s, "unit": "sample-steps/s", "vs_plain": plain_s / grpo_s,
             "mfu": work / grpo_s * per_pass / b / peak, "peak_gib": grpo_peak}]
    return {"ok": ratio_ok, "rows": rows, "check": f"on-policy ratio max |r - 1| = {first['policy/ratio_max_dev']:.3g}",
            "goal": GOALS["learner"], "best_vs_plain": rows[1]["vs_plain"]}


def part_grpo(dry: bool, sh: dict, out: Path) -> dict:
    """jobs.grpo with the three roles on one device (toy models): seconds per step and the GPU's busy share."""
    from jobs import grpo
    from spatialrl.metrics import read_metrics
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel

    run = out / "grpo_run"
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    SpatialRewardModel(RewardModelConfig(backbone="tiny-pretrained", image_size=56)).save_pretrained(work / "rm")
    (work / "prompts.txt").write_text("\n".join(
        f"a {c} circle left of a {d} square" for c in ("red", "green", "blue") for d in ("yellow", "purple")) + "\n")
    gpus = 0.3 if torch.cuda.is_available() else 0
    sets = [f"sampler.model=assets/tiny-pretrained/flux", f"reward.checkpoint={work / 'rm'}",
            f"data.prompts={work / 'prompts.txt'}", f"grpo.steps={sh['grpo_steps']}", "grpo.eval_prompts=0",
            "grpo.save_every=1000", "grpo.grid_every=1000", "grpo.prompts_per_step=2", "sampler.group_size=4",
            "sampler.batch_size=4", "grpo.top_k=0", "sampler.num_steps=4", "sampler.true_cfg_scale=1.0",
            *(f"cluster.{role}.{k}={v}" for role in ("sampler", "reward", "learner")
              for k, v in (("count", 1), ("num_cpus", 0.5), ("num_gpus", gpus)))]
    if torch.cuda.is_available():
        sets += ["sampler.device=cuda", "reward.device=cuda"]
    busy = Busy(run / "metrics.jsonl") if torch.cuda.is_available() else None
    cmd = ["--config", "configs/grpo_demo.yaml", "--out", str(run), "--overwrite"] + [x for s in sets for x in ("--set", s)]
    if busy:
        busy.start()
    try:
        rc = grpo.main(cmd)
    finally:
        if busy:
            busy.stop()
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    steady = rows[1:] or rows
    step_s = statistics.fmean(r["time/step_s"] for r in steady) if steady else float("nan")
    share = busy.share() if busy else None
    return {"ok": rc == 0 and len(rows) == sh["grpo_steps"], "rc": rc,
            "rows": [{"role": "grpo", "path": "one GRPO step, 3 roles on one device (toy models)", "value": step_s,
                      "unit": "s/step", "vs_plain": None, "busy": share}],
            "check": f"jobs.grpo exit {rc}, {len(rows)} steps logged", "goal": GOALS["grpo_busy"], "busy": share}


class Busy:
    """GPU utilisation from nvidia-smi every 200 ms, kept from the first logged step on (steps 2..N)."""

    def __init__(self, metrics: Path):
        self.metrics, self.samples, self._stop = metrics, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self):
        while not self._stop.is_set():
            try:
                started = self.metrics.is_file() and self.metrics.stat().st_size > 0
                q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=5)
                if started and q.returncode == 0:
                    self.samples.append(float(q.stdout.split()[0]) / 100)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)

    def share(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


# ------------------------------------------------------------------------------------------------ report


def table(result: dict) -> str:
    lines = ["| role | path | value | unit | vs plain | MFU | peak GiB | goal |", "|---|---|---|---|---|---|---|---|"]
    for part, res in result["parts"].items():
        if part == "tests":
            lines.append(f"| tests | pytest -m gpu: {res.get('tests', 0)} run, {res.get('skipped', 0)} skipped, "
                         f"{res.get('failures', 0) + res.get('errors', 0)} failed | | | | | | "
                         f"{'ok' if res['ok'] else 'FAILED'} |")
            continue
        for r in res.get("rows", []):
            goal = ""
            if r["role"] == "grpo" and r.get("busy") is not None:
                goal = f"busy {r['busy']:.0%} (goal >= {GOALS['grpo_busy']:.0%})"
            elif r.get("vs_plain") is not None and "plain" not in r["path"] and "stock" not in r["path"]:
                goal = f">= {GOALS[r['role']]}x: {'met' if r['vs_plain'] >= GOALS[r['role']] else 'not met'}"
            fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
            lines.append(f"| {r['role']} | {r['path']} | {r['value']:.4g} | {r['unit']} | {fmt(r.get('vs_plain'), '.2f')} "
                         f"| {fmt(r.get('mfu'), '.1%')} | {fmt(r.get('peak_gib'), '.1f')} | {goal} |")
        if not res["ok"]:
            lines.append(f"| {part} | FAILED: {res.get('error') or res.get('check')} | | | | | | |")
    checks = "; ".join(f"{p}: {r.get('check', '')}" for p, r in result["parts"].items())
    return "\n".join(lines) + f"\n\nChecks: {checks}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="the same code on CPU at tiny shapes")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu_suite"))
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {PARTS}")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled sampler path")
    p.add_argument("--compile-learner", action="store_true", help="run the learner with sampler.compile too")
    p.add_argument("--no-append", action="store_true", help="do not append the table to bench/RESULTS.md")
    p.add_argument("--append-from", type=Path, help="append this gpu_suite.md to bench/RESULTS.md and exit")
    args = p.parse_args(argv)
    if args.append_from:
        append_results(args.append_from.read_text())
        return 0
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--only {unknown}: choose from {list(PARTS)}")
    cuda = torch.cuda.is_available()
    dry = args.cpu_dry_run
    if not cuda and not dry:
        print("gpu_suite: no CUDA device here; run with --cpu-dry-run for the CPU check of this code", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if dry:
        torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared CPU
    try:
        return run_parts(args, parts, dry, cuda)
    finally:
        torch.set_num_threads(threads)


def run_parts(args, parts: list[str], dry: bool, cuda: bool) -> int:
    sh = shapes(dry)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "dry_run": dry,
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "shapes": {k: str(v) for k, v in sh.items()}, "parts": {}}
    runs = {"tests": lambda: part_tests(dry, args.out), "sampler": lambda: part_sampler(dry, sh, not args.no_compile),
            "reward": lambda: part_reward(dry, sh), "learner": lambda: part_learner(dry, sh, args.compile_learner),
            "grpo": lambda: part_grpo(dry, sh, args.out)}
    for part in parts:
        t0 = time.perf_counter()
        print(f"gpu_suite: {part} ...", flush=True)
        try:
            res = runs[part]()
        except Exception as exc:  # a failing part is reported and fails the run; the other parts still run
            traceback.print_exc()
            res = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        res["seconds"] = time.perf_counter() - t0
        result["parts"][part] = res
        print(f"gpu_suite: {part} {'ok' if res['ok'] else 'FAILED'} in {res['seconds']:.0f} s", flush=True)
        free()
    md = table(result)
    head = (f"### GPU suite {result['when']} on {result['device']}" + (" (CPU dry run, tiny shapes)" if dry else "")
            + f"\n\n`bash bench/gpu_suite.sh{' --cpu-dry-run' if dry else ''}` (torch {torch.__version__})\n\n")
    (args.out / "gpu_suite.md").write_text(head + md)
    (args.out / "gpu_suite.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(head + md)
    if cuda and not dry and not args.no_append:
        append_results(head + md)
    failed = [k for k, v in result["parts"].items() if not v["ok"]]
    if failed:
        print(f"gpu_suite: FAILED parts: {failed} (see above)", file=sys.stderr)
        return 1
    return 0


def append_results(section: str) -> None:
    with open(RESULTS, "a") as f:
        f.write("\n" + section.strip() + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
