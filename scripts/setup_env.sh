#!/usr/bin/env bash
# Create or reuse the project-local virtual environment (.venv) and install everything the project needs.
# Idempotent: a stamp file keyed on pyproject.toml + constraints.txt skips the work when nothing changed.
# Why the order: torch/torchvision first (the pinned pair that lies on this machine's disk; plain `torch`
# would pull a different build), then deepspeed with --no-build-isolation so its build sees that torch
# instead of fetching a second one, then the project itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.spatialrl-installed"
want=$(cat pyproject.toml constraints.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
INSTALL="install -q --no-compile"  # byte-compiled once below, on every core, instead of file by file inside pip
$PIP $INSTALL --upgrade pip setuptools wheel
$PIP $INSTALL -c constraints.txt torch torchvision
$PIP $INSTALL -c constraints.txt ninja packaging py-cpuinfo psutil
DS_BUILD_OPS=0 $PIP $INSTALL -c constraints.txt --no-build-isolation deepspeed
$PIP $INSTALL -c constraints.txt -e ".[dev]"
# the .pyc files pip would have written, on all cores (~50 s on 2 cores, about 15 s less than pip's own pass). Needed
# even where PYTHONDONTWRITEBYTECODE is set (Python then never writes them, and every Ray worker would recompile
# torch and transformers on import). A few vendored test files that do not parse make compileall exit 1: ignored.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
echo "$want" > "$stamp"
echo "environment ready: $VENV"
