#!/bin/bash
# Richards et al. 2021's Figure 4 study on this machine: for each seed, M = 2, 10, 50 (MS picks fewer), ACMRR,
# the control-oriented method, MAML, ANIL and Meta-SGD, each preset trained and evaluated by `metaexp
# reproduce` and its best.pt evaluated too; then the figures. One thread per run.
# Usage: [METHODS="acmrr ..."] [MS="2 10"] ci/rotorcraft_study.sh OUT [SEEDS...]   (default: all five methods,
# M = 2, 10, 50, seeds 0..9; OUT/runs, OUT/records)
set -u
out=$1; shift
seeds=${*:-0 1 2 3 4 5 6 7 8 9}
methods=${METHODS:-acmrr control_oriented maml anil metasgd}
ms=${MS:-2 10 50}
export OMP_NUM_THREADS=1
for s in $seeds; do
  for m in $ms; do
    for method in $methods; do
      preset=${method}_rotorcraft_m$m
      echo "=== $(date +%T) seed $s M $m $method"
      python -m metaexp reproduce "$preset" --device cpu --minutes 600 --set "seed=$s" \
        --runs "$out/runs/seed$s" --records "$out/records/seed$s" --page "$out/page-seed$s.md" || continue
      python -m metaexp eval "checkpoint=$out/runs/seed$s/$preset/checkpoints/best.pt" trainer.device=cpu &&
        cp "$out/runs/seed$s/$preset"/eval-*-best.json "$out/records/seed$s/$preset/"
    done
  done
done
python ci/control_figures.py "$out/runs" --out docs --flight-seed "${seeds%% *}"  # Figure 3: the first seed run
