"""The one DeepSpeed config builder, for the reward model's Ray Train workers and the GRPO learner ranks.

Both train with torch's AdamW as the client optimizer under ZeRO stage 1-3, gradient clipping, bf16 on GPUs, and
DeepSpeed's own progress printing turned off (the jobs report through `spatialrl.metrics`).
"""

from __future__ import annotations

SHM_OP = "deepspeed_shm_comm"


def skip_cpu_shm_op() -> None:
    """Call before `deepspeed.init_distributed` on CPU ranks. DeepSpeed's CPU backend JIT-compiles its shared-memory
    all-reduce op (ninja, ~41 s on 2 cores, again for every new environment path) although only its
    `inference_all_reduce` uses it; training's collectives go through torch.distributed (gloo) either way. Marking the
    op incompatible makes DeepSpeed skip the build (its op table is one cached dict, so the edit holds)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False


def deepspeed_config(*, micro_batch: int, world_size: int, grad_clip: float, zero_stage: int, bf16: bool,
                     scheduler: dict | None = None, managed_accumulation: bool | None = None) -> dict:
    """`scheduler`: a DeepSpeed scheduler block ({"type": ..., "params": ...}) or None. `managed_accumulation`
    False tells DeepSpeed the caller decides where an optimizer step falls (GRPO: the number of backward passes
    per step varies with Top-k); None leaves DeepSpeed's default."""
    out = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # torch AdamW as the client optimizer (CPU and GPU)
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if managed_accumulation is not None:
        out["managed_gradient_accumulation"] = managed_accumulation
    if scheduler is not None:
        out["scheduler"] = scheduler
    return out
