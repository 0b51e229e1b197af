#!/usr/bin/env bash
# Ablation: optimizer, learning rate and lr schedule. Each entry of CONFIGS is
# optim:lr:scheduler[:warmup_epochs]; MOMENTUM and WEIGHT_DECAY apply to every run, --step_size/--gamma
# can be given in TRAIN_FLAGS. Usage: DATASETS_FOLDER=... [DATASET_NAME=pitts30k] bash ablations/lr_optimizer.sh
#        QUICK=1 bash ablations/lr_optimizer.sh   (tiny synthetic world, about a minute)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ablation_setup lr_optimizer
if [[ "$QUICK" == 1 ]]; then
    CONFIGS=${CONFIGS:-"adam:1e-3:none adamw:1e-3:cosine:0.5 sgd:1e-2:step"}
else
    CONFIGS=${CONFIGS:-"adam:1e-5:none adam:1e-4:none adamw:1e-5:none sgd:1e-3:none sgd:1e-2:none \
adam:1e-5:cosine adam:1e-5:step adam:1e-4:cosine:1"}
fi
MOMENTUM=${MOMENTUM:-0.9}
WEIGHT_DECAY=${WEIGHT_DECAY:-0}

for config in $CONFIGS; do
    IFS=: read -r optim lr scheduler warmup <<< "$config"
    warmup=${warmup:-0}
    for seed in $SEEDS; do
        train "${optim}_lr${lr}_${scheduler}_warm${warmup}_seed${seed}" --optim "$optim" --lr "$lr" \
            --scheduler "$scheduler" --warmup_epochs "$warmup" --momentum "$MOMENTUM" \
            --weight_decay "$WEIGHT_DECAY" --seed "$seed"
    done
done
collect
