"""DeepSpeed on CPU ranks: the shared-memory all-reduce op (inference only) is skipped, not JIT-compiled."""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_skip_cpu_shm_op_makes_deepspeed_skip_the_build():
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    from spatialrl.deepspeed_config import SHM_OP, skip_cpu_shm_op

    assert SHM_OP in deepspeed.ops.__compatible_ops__  # the name DeepSpeed's op table uses
    skip_cpu_shm_op()
    assert deepspeed.ops.__compatible_ops__[SHM_OP] is False
    assert build_shm_op() is None  # what TorchBackend calls in init_distributed: no ninja build, no op
