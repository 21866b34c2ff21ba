#!/usr/bin/env bash
# The relation curriculum on the shipped backbone (grown to 6 LM layers, full k/v heads), as chained probe runs:
# the recipe of the resume points in assets/tiny-pretrained/qwen2_5_vl_curriculum/ (their logs sit beside them).
# Each stage saves a Hugging Face folder that the next starts from; logs go next to them. Stages:
#   s1  one relation word (left_of), question hints on (subject colour after layer 2, its relation set after 4)
#   s2  one word per axis (left_of, above)                     -> s2_left_above
#   s3  all four words, four relation sets at the vision tower's output, each through its own linear read-out
#                                                              -> s3_four_linear (the horizontal pair at chance)
#   s4  as s3 plus the word hint (the "?" names the asked word after layer 3): every word >= 0.98
#                                                              -> s4_word_hint
#   s5  s4's questions half and half with the reward model's own question (reward instruction + the world's full
#       prompt, true or 1-2 relations flipped -> yes/no), each relation sentence's last token given the question's
#       hints and a yes/no clause hint                         -> s5_clause_hints
# Usage: bash bench/backbone_curriculum.sh OUT [FIRST_STAGE]   (e.g. OUT s5 continues from OUT/s4, or copy a
# shipped resume point to OUT/s4 first). THREADS (default 1) sets torch threads; wall times in bench/RESULTS.md.
set -euo pipefail
out=${1:-runs/curriculum}
first=${2:-s1}
threads=${THREADS:-1}
mkdir -p "$out"
PY=.venv/bin/python
four=(--relations left_of,right_of,above,below --relation-layers 0,0,0,0 --relation-readout linear)
run() { local name=$1; shift; echo "== $name: $*"; $PY bench/relation_probe.py --relation-loss 1 --hint-loss 1 \
        --threads "$threads" "$@" --save "$out/$name" > "$out/$name.log" 2>&1; tail -n 4 "$out/$name.log"; }
case $first in
  s1) run s1 --relation-layers 0,0 --relations left_of --max-steps 2500 ;&
  s2) run s2 --init "$out/s1" --relation-layers 0,0 --relations left_of,above --max-steps 2000 --seed 1 ;&
  s3) run s3 --init "$out/s2" "${four[@]}" --max-steps 2000 --minutes 40 --seed 2 ;&
  s4) run s4 --init "$out/s3" "${four[@]}" --word-hint 1 --report-words --max-steps 2000 --minutes 40 --seed 3 ;&
  s5) run s5 --init "$out/s4" "${four[@]}" --word-hint 1 --clause-hint 1 --match-fraction 0.5 --match-scenes 200 \
          --pair-eval 200 --max-steps 3000 --minutes 25 --seed 5 ;;
  *) echo "unknown stage $first (use s1 .. s5)" >&2; exit 2 ;;
esac
