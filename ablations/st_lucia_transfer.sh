#!/usr/bin/env bash
# Ablation: generalization. Train on DATASET_NAME (e.g. pitts30k) with each aggregation in AGGREGATIONS, test
# on its own test split (train.py) and on the test split of TRANSFER_DATASET (default st_lucia, which only
# needs images/test/). CHECKPOINTS="a.pth b.pth" evaluates existing checkpoints instead of training.
# Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] [TRANSFER_DATASET=st_lucia] bash ablations/st_lucia_transfer.sh
#        QUICK=1 bash ablations/st_lucia_transfer.sh   (two tiny synthetic worlds; the second has only test/)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup st_lucia_transfer
TRANSFER_DATASET=${TRANSFER_DATASET:-st_lucia}
if [[ "$QUICK" == 1 ]]; then
    quick_world "$DATASETS_FOLDER" "$TRANSFER_DATASET" 1
    rm -rf "${DATASETS_FOLDER:?}/$TRANSFER_DATASET/images/train" "${DATASETS_FOLDER:?}/$TRANSFER_DATASET/images/val"
fi
AGGREGATIONS=${AGGREGATIONS:-"gem netvlad"}

checkpoints=()
if [[ -n "${CHECKPOINTS:-}" ]]; then
    read -r -a checkpoints <<< "$CHECKPOINTS"
else
    for aggregation in $AGGREGATIONS; do
        for seed in $SEEDS; do
            train "${aggregation}_seed${seed}" --aggregation "$aggregation" --seed "$seed"
            checkpoints+=("$RUN/best_model.pth")
        done
    done
fi
for ckpt in "${checkpoints[@]}"; do
    evaluate "eval_${TRANSFER_DATASET}_$(basename "$(dirname "$(dirname "$ckpt")")")" "$ckpt" \
        --dataset_name "$TRANSFER_DATASET" --split test
done
collect
