#!/usr/bin/env bash
# Ablation: success radius at test time. One model (trained here, or CHECKPOINT=path/best_model.pth) is
# evaluated with eval.py --val_positive_dist_threshold T for each T in THRESHOLDS (metres), no retraining.
# Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] bash ablations/eval_threshold.sh ; QUICK=1 for a smoke run
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup eval_threshold
if [[ "$QUICK" == 1 ]]; then THRESHOLDS=${THRESHOLDS:-"10 50"}; else THRESHOLDS=${THRESHOLDS:-"5 10 15 25 50 100"}; fi
SPLIT=${SPLIT:-test}

checkpoints=()
if [[ -n "${CHECKPOINT:-}" ]]; then
    checkpoints=("$CHECKPOINT")
else
    for seed in $SEEDS; do
        train "model_seed${seed}" --seed "$seed"
        checkpoints+=("$RUN/best_model.pth")
    done
fi
for ckpt in "${checkpoints[@]}"; do
    model=$(basename "$(dirname "$(dirname "$ckpt")")")
    for threshold in $THRESHOLDS; do
        evaluate "eval_thr${threshold}_${model}" "$ckpt" --dataset_name "$DATASET_NAME" --split "$SPLIT" \
            --val_positive_dist_threshold "$threshold"
    done
done
collect
