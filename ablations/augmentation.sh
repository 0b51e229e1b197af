#!/usr/bin/env bash
# Ablation: training-time augmentation. CONFIGS names entries of the table below (name -> train.py flags).
# Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] [CONFIGS="none light strong"] bash ablations/augmentation.sh
#        QUICK=1 bash ablations/augmentation.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup augmentation
declare -A AUG=(
    [none]="--augmentation_preset none"
    [light]="--augmentation_preset light"
    [strong]="--augmentation_preset strong"
    [strong_all]="--augmentation_preset strong --augment_targets all"
    [jitter]="--brightness 0.4 --contrast 0.4 --saturation 0.4 --hue 0.1"
    [crop]="--random_resized_crop 0.5"
    [perspective]="--random_perspective 0.3"
    [rotation]="--random_rotation 15"
    [blur]="--gaussian_blur 2"
    [erasing]="--random_erasing 0.5"
    [grayscale]="--grayscale 0.2"
    [hflip]="--horizontal_flip 0.5"
)
if [[ "$QUICK" == 1 ]]; then
    CONFIGS=${CONFIGS:-"none light strong_all"}
else
    CONFIGS=${CONFIGS:-"none light strong strong_all jitter crop perspective rotation blur erasing grayscale hflip"}
fi

for config in $CONFIGS; do
    if [[ -z "${AUG[$config]+set}" ]]; then
        echo "error: unknown augmentation config '$config'; choose from: ${!AUG[*]}" >&2
        exit 2
    fi
    read -r -a flags <<< "${AUG[$config]}"
    for seed in $SEEDS; do
        train "aug_${config}_seed${seed}" "${flags[@]}" --seed "$seed"
    done
done
collect
