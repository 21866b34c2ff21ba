#!/usr/bin/env bash
# The relation curriculum on the shipped backbone (grown to 6 layers, full k/v heads), as chained probe runs.
# Each stage saves a Hugging Face folder that the next starts from; logs go next to them. Stages:
#   s1  one relation word (left_of), the question hints on (subject colour at layer 2, its relation set at 4)
#   s2  all four positional words from s1 (the hint names the set for the asked word, so no XOR at the answer)
#   s3  s2's questions mixed half and half with the reward model's own question (reward instruction + the world's
#       full prompt, true or 1-2 relations flipped -> yes/no), with dataset-style preference pairs evaluated
# Usage: bash bench/backbone_curriculum.sh OUT [FIRST_STAGE]   (e.g. runs/bb s2 to continue from OUT/s1)
set -euo pipefail
out=${1:-runs/curriculum}
first=${2:-s1}
threads=${THREADS:-2}
mkdir -p "$out"
PY=.venv/bin/python
common=(--relation-loss 1 --relation-layers 0,0 --hint-loss 1 --threads "$threads")
run() { local name=$1; shift; echo "== $name: $*"; $PY bench/relation_probe.py "${common[@]}" "$@" --save "$out/$name" > "$out/$name.log" 2>&1; tail -n 4 "$out/$name.log"; }
case $first in
  s1) run s1 --relations left_of --max-steps 2500 --minutes 40 ;&
  s2) run s2 --init "$out/s1" --relations left_of,right_of,above,below --max-steps 1500 --minutes 25 --seed 1 ;&
  s3) run s3 --init "$out/s2" --relations left_of,right_of,above,below --match-fraction 0.5 --match-scenes 200 \
          --pair-eval 200 --max-steps 1500 --minutes 25 --seed 2 ;;
  *) echo "unknown stage $first (use s1, s2 or s3)" >&2; exit 2 ;;
esac
