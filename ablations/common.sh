# Shared by the ablation scripts; sourced, not run. Each script is a front-end of the study runner:
#     python study.py --only <experiment> [options from the environment] [script arguments]
# The experiments and their grids are defined once, in study/plan.toml. See ablations/README.md.
#
# Environment (all optional): DATASETS_FOLDER (real datasets; without it the synthetic worlds are generated),
# DATASET_NAME (--train_dataset), TRANSFER_DATASET (--transfer_dataset), SEEDS (--seeds, e.g. "0 1 2"),
# STUDY (--out, default logs/study), QUICK=1 (the tiny recipe on tiny worlds, into logs/quick_study),
# PYTHON (default: the repository's .venv/bin/python when it exists, else python3).
set -euo pipefail

ABL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ABL_REPO/.venv/bin/python" ]]; then PYTHON="$ABL_REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# run_study EXPERIMENT [ARGS...]: exec study.py for one experiment of the plan, options from the environment
run_study() {
    local experiment=$1
    shift
    local args=(--only "$experiment")
    if [[ "${QUICK:-0}" == 1 ]]; then
        unset DATASETS_FOLDER
        args+=(--recipe tiny --out "${STUDY:-logs/quick_study}")
    else
        args+=(--out "${STUDY:-logs/study}")
    fi
    [[ -n "${DATASET_NAME:-}" ]] && args+=(--train_dataset "$DATASET_NAME")
    [[ -n "${TRANSFER_DATASET:-}" ]] && args+=(--transfer_dataset "$TRANSFER_DATASET")
    if [[ -n "${SEEDS:-}" ]]; then
        read -r -a seeds <<< "$SEEDS"
        args+=(--seeds "${seeds[@]}")
    fi
    exec "$PYTHON" "$ABL_REPO/study.py" "${args[@]}" "$@"
}
