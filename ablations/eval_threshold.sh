#!/usr/bin/env bash
# Ablation: success radius at test time (eval.py --val_positive_dist_threshold), same checkpoints.
# Front-end of `python study.py --only eval_threshold` (grid: study/plan.toml). Usage:
#     [DATASETS_FOLDER=...] [SEEDS="0 1 2"] [STUDY=logs/study] bash ablations/eval_threshold.sh [study.py options]
#     QUICK=1 bash ablations/eval_threshold.sh      (tiny synthetic worlds, seconds per run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study eval_threshold "$@"
