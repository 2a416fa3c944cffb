#!/usr/bin/env bash
# Frozen vs LoRA-fine-tuned embeddings on the demo's synthetic dataset (tiny random BEATs, 2 s clips):
# the official score of `asd run --no-finetune` and of fine-tuning (machine labels, attribute labels,
# machine labels at the default lr 1e-4) over three fine-tuning seeds each. About 2 minutes on 2 CPU cores; deterministic.
#   bash bench/frozen_vs_finetuned.sh [WORK_DIR]
set -euo pipefail
work=${1:-$(mktemp -d)}
asd demo --out "$work" >/dev/null 2>&1  # dataset, tiny checkpoint and the demo run (machine labels, seed 0)
ckpt="$work/beats_tiny_random_seed0.pt"
common=(--checkpoint "$ckpt" --seconds 2 --device cpu)
asd run "$work/data" "${common[@]}" --no-finetune --out "$work/frozen" >/dev/null 2>&1
for seed in 0 1 2; do
  for labels in machine attribute; do
    asd run "$work/data" "${common[@]}" --epochs 10 --lr 1e-3 --labels "$labels" --seed "$seed" \
      --out "$work/ft-$labels-seed$seed" >/dev/null 2>&1
  done
  asd run "$work/data" "${common[@]}" --epochs 10 --lr 1e-4 --seed "$seed" --out "$work/ft-lr1e-4-seed$seed" >/dev/null 2>&1
done
systems=("$work/frozen/submission")
for name in machine attribute lr1e-4; do for seed in 0 1 2; do systems+=("$work/ft-$name-seed$seed/submission"); done; done
asd report "${systems[@]}" --data "$work/data" --format csv --out "$work/compare.csv" 2>&1 | grep -i "official score"
echo "systems: frozen, ft-machine-seed0..2, ft-attribute-seed0..2, ft-lr1e-4-seed0..2 (machine labels; work dir: $work)" >&2
