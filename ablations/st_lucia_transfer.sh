#!/usr/bin/env bash
# Ablation: generalization: models trained on the training dataset, tested on the transfer dataset (St Lucia).
# Front-end of `python study.py --only transfer` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/st_lucia_transfer.sh [study.py options]
#     QUICK=1 bash ablations/st_lucia_transfer.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study transfer "$@"
