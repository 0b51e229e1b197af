#!/usr/bin/env bash
# Ablation: image size. For each aggregation in AGGREGATIONS and each training size HxW in TRAIN_SIZES, train
# with --resize H W (train.py tests at that size), then evaluate at every other size of TEST_SIZES with
# eval.py --test_resize. Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] bash ablations/resize.sh ; QUICK=1
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup resize
if [[ "$QUICK" == 1 ]]; then
    TRAIN_SIZES=${TRAIN_SIZES:-"32x32 48x40"}
    TEST_SIZES=${TEST_SIZES:-"48x48"}
else
    TRAIN_SIZES=${TRAIN_SIZES:-"240x320 480x640"}
    TEST_SIZES=${TEST_SIZES:-"240x320 480x640 720x960"}
fi
AGGREGATIONS=${AGGREGATIONS:-"gem netvlad"}

for aggregation in $AGGREGATIONS; do
    for size in $TRAIN_SIZES; do
        for seed in $SEEDS; do
            name="${aggregation}_${size}_seed${seed}"
            train "$name" --aggregation "$aggregation" --resize "${size%x*}" "${size#*x}" --seed "$seed"
            for test_size in $TEST_SIZES; do
                [[ "$test_size" == "$size" ]] && continue  # train.py already tested at the training size
                evaluate "eval_${test_size}_${name}" "$RUN/best_model.pth" --dataset_name "$DATASET_NAME" \
                    --test_resize "${test_size%x*}" "${test_size#*x}"
            done
        done
    done
done
collect
