#!/usr/bin/env bash
# Ablation: radius of the training positives (--train_positives_dist_threshold).
# Front-end of `python study.py --only train_threshold` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/train_threshold.sh [study.py options]
#     QUICK=1 bash ablations/train_threshold.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study train_threshold "$@"
