#!/usr/bin/env bash
# Ablation: training-time augmentation, also tested on the transfer dataset.
# Front-end of `python study.py --only augmentation` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/augmentation.sh [study.py options]
#     QUICK=1 bash ablations/augmentation.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study augmentation "$@"
