#!/usr/bin/env bash
# Ablation: optimizer, learning rate and lr schedule.
# Front-end of `python study.py --only lr_optimizer` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/lr_optimizer.sh [study.py options]
#     QUICK=1 bash ablations/lr_optimizer.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study lr_optimizer "$@"
