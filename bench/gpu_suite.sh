#!/usr/bin/env bash
# The GPU suite in one command (bench/gpu_suite.py says what it measures):
#   bash bench/gpu_suite.sh                 # on a GPU machine; results in $OUT (default runs/gpu_suite)
#   bash bench/gpu_suite.sh --cpu-dry-run   # the same code on CPU at tiny shapes, a few minutes
# Extra arguments go to `python -m bench.gpu_suite` (e.g. --only sampler,learner --no-compile).
# On a GPU image without the project's venv, what it lacks (Ray, DeepSpeed, diffusers and their pure-Python
# needs) comes from a wheel bundle in .device-bundle/ (built on a machine with internet; its install.sh puts
# the wheels in /tmp/site), installed here before anything imports them.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
for a in "$@"; do [ "$a" = "--cpu-dry-run" ] && dry=1; done
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
if [ "$dry" = 0 ]; then
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite.sh: torch sees no CUDA device here; use --cpu-dry-run on a CPU machine" >&2
    exit 2
  fi
  if ! "$py" -c "import ray, deepspeed, diffusers" 2>/dev/null; then
    if [ ! -x .device-bundle/install.sh ]; then
      echo "gpu_suite.sh: ray / deepspeed / diffusers are missing and there is no .device-bundle/install.sh:" \
           "install the project (scripts/setup_env.sh) or bring the wheel bundle" >&2
      exit 2
    fi
    bash .device-bundle/install.sh
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # DeepSpeed's JIT op build fails on an arch list entry like '9.0a'; pin the device's own capability
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$py" -m bench.gpu_suite "$@"
