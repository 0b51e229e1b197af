#!/usr/bin/env bash
# Ablation: image size at training (--resize) and at test time (--test_resize).
# Front-end of `python study.py --only image_size` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/resize.sh [study.py options]
#     QUICK=1 bash ablations/resize.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study image_size "$@"
