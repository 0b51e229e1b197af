#!/usr/bin/env bash
# Ablation: training positives radius --train_positives_dist_threshold (metres), each value of THRESHOLDS
# (all <= --val_positive_dist_threshold, 25 m by default). Evaluation always uses 25 m.
# Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] bash ablations/train_threshold.sh ; QUICK=1 for a smoke run
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup train_threshold
if [[ "$QUICK" == 1 ]]; then THRESHOLDS=${THRESHOLDS:-"5 15"}; else THRESHOLDS=${THRESHOLDS:-"5 10 15 20 25"}; fi

for threshold in $THRESHOLDS; do
    for seed in $SEEDS; do
        train "train_thr${threshold}_seed${seed}" --train_positives_dist_threshold "$threshold" --seed "$seed"
    done
done
collect
