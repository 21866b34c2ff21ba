#!/usr/bin/env bash
# The relation curriculum (configs/backbone_curriculum.yaml) from FIRST_STAGE to the end, into OUT: a shorthand for
#   python -m jobs.pretrain_backbone --recipe curriculum --out OUT --stages FIRST,...,s7
# (the job reuses every stage folder already in OUT; copy a shipped resume point to OUT/<stage before FIRST>, or
# call the job with --init). THREADS (default 1) sets torch threads; wall times in bench/RESULTS.md.
# Usage: bash bench/backbone_curriculum.sh OUT [FIRST_STAGE]
set -euo pipefail
out=${1:-runs/curriculum}
first=${2:-s1}
all=(s1 s2 s3 s4 s5 s6 s7)
stages=""
for s in "${all[@]}"; do
  [[ -n $stages || $s == "$first" ]] && stages+="${stages:+,}$s"
done
[[ -n $stages ]] || { echo "unknown stage $first (use ${all[*]})" >&2; exit 2; }
exec .venv/bin/python -m jobs.pretrain_backbone --recipe curriculum --out "$out" --stages "$stages" --threads "${THREADS:-1}"
