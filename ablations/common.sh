# Shared set-up of the ablation scripts; sourced, not run. See ablations/README.md.
#
# Environment: DATASETS_FOLDER, DATASET_NAME (default pitts30k), QUICK=1 (tiny synthetic world, tiny flags),
# SEEDS (default "0"; several seeds are merged into mean ± std by the collector), PYTHON, ABLATION_DIR
# (runs go to logs/$ABLATION_DIR/<run>/<timestamp>/), TRAIN_FLAGS / EVAL_FLAGS (extra flags for every
# train.py / eval.py call). Every script defines its grid in environment variables that can be overridden.
set -euo pipefail

ABL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ABL_REPO/.venv/bin/python" ]]; then PYTHON="$ABL_REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ABL_REPO${PYTHONPATH:+:$PYTHONPATH}"
QUICK=${QUICK:-0}
SEEDS=${SEEDS:-0}
read -r -a USER_TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"
read -r -a USER_EVAL_FLAGS <<< "${EVAL_FLAGS:-}"

# quick_world DIR NAME SEED: a tiny 32-px synthetic world at DIR/NAME
quick_world() {
    "$PYTHON" -m tools.synthetic_world --out "$1" --name "$2" --seed "$3" --image_size 32 --map_size 512 \
        --train_db 40 --train_q 20 --val_db 20 --val_q 10 --test_db 20 --test_q 10 --overwrite > /dev/null
}

# ablation_setup NAME: sets ABLATION_DIR, DATASETS_FOLDER, DATASET_NAME and the BASE_TRAIN / BASE_EVAL flag arrays
ablation_setup() {
    if [[ "$QUICK" == 1 ]]; then
        ABLATION_DIR=${ABLATION_DIR:-quick_ablations/$1_$(date +%Y%m%d_%H%M%S)}
        QUICK_FOLDER=$(mktemp -d "${TMPDIR:-/tmp}/vg_quick_$1.XXXXXX")
        trap 'rm -rf "$QUICK_FOLDER"' EXIT
        DATASETS_FOLDER=$QUICK_FOLDER
        DATASET_NAME=synthetic
        quick_world "$DATASETS_FOLDER" "$DATASET_NAME" 0
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        BASE_EVAL=(--resize 32 32 --infer_batch_size 32 --num_workers 0 --device cpu)
        BASE_TRAIN=("${BASE_EVAL[@]}" --pretrain none --lr 1e-3 --train_batch_size 4 --negs_num_per_query 2
                    --neg_samples_num 10 --cache_refresh_rate 8 --queries_per_epoch 8 --epochs_num 1
                    --netvlad_clusters 8)
    else
        : "${DATASETS_FOLDER:?set DATASETS_FOLDER to the folder holding the datasets_vg datasets (or QUICK=1)}"
        DATASET_NAME=${DATASET_NAME:-pitts30k}
        ABLATION_DIR=${ABLATION_DIR:-ablation_$1}
        BASE_EVAL=()
        BASE_TRAIN=()
    fi
    echo "ablation $1: runs in logs/$ABLATION_DIR (datasets: $DATASETS_FOLDER, training on $DATASET_NAME)"
}

# latest_run SAVE_DIR: the newest run folder of logs/SAVE_DIR (empty when none)
latest_run() {
    local d
    d=$(ls -1d "logs/$1"/*/ 2> /dev/null | sort | tail -n 1) || true
    echo "${d%/}"
}

# train NAME FLAGS...: train.py on $DATASET_NAME with the base flags, FLAGS and --save_dir $ABLATION_DIR/NAME;
# a run that already has results.json is kept (not retrained). Sets RUN to the run folder.
train() {
    local name=$1
    shift
    RUN=$(latest_run "$ABLATION_DIR/$name")
    if [[ -n "$RUN" && -f "$RUN/results.json" ]]; then
        echo "== $name: done before ($RUN), skipped"
        return
    fi
    echo "== train $name: $*"
    "$PYTHON" "$ABL_REPO/train.py" --datasets_folder "$DATASETS_FOLDER" --dataset_name "$DATASET_NAME" \
        ${BASE_TRAIN[@]+"${BASE_TRAIN[@]}"} ${USER_TRAIN_FLAGS[@]+"${USER_TRAIN_FLAGS[@]}"} "$@" \
        --save_dir "$ABLATION_DIR/$name"
    RUN=$(latest_run "$ABLATION_DIR/$name")
}

# eval_size RUN_FOLDER: "H W", the test image size of a training run (its --test_resize, else --resize)
eval_size() {
    "$PYTHON" -c 'import json, sys; a = json.load(open(sys.argv[1])); print(*(a.get("test_resize") or a["resize"]))' \
        "$1/args.json"
}

# evaluate NAME CHECKPOINT FLAGS...: eval.py of CHECKPOINT at its training run's test size, with the base flags,
# FLAGS and --save_dir $ABLATION_DIR/NAME (FLAGS may set another --test_resize)
evaluate() {
    local name=$1 ckpt=$2
    shift 2
    local done_run
    done_run=$(latest_run "$ABLATION_DIR/$name")
    if [[ -n "$done_run" && -f "$done_run/results.json" ]]; then
        echo "== $name: done before ($done_run), skipped"
        return
    fi
    echo "== eval $name: $*"
    local size=()
    if [[ -f "$(dirname "$ckpt")/args.json" ]]; then
        read -r -a size <<< "$(eval_size "$(dirname "$ckpt")")"
        size=(--resize "${size[@]}")
    fi
    "$PYTHON" "$ABL_REPO/eval.py" --datasets_folder "$DATASETS_FOLDER" --resume "$ckpt" \
        ${BASE_EVAL[@]+"${BASE_EVAL[@]}"} ${size[@]+"${size[@]}"} ${USER_EVAL_FLAGS[@]+"${USER_EVAL_FLAGS[@]}"} "$@" \
        --save_dir "$ABLATION_DIR/$name"
}

# collect: the table and plots of the whole ablation in logs/$ABLATION_DIR/summary
collect() {
    "$PYTHON" "$ABL_REPO/collect_results.py" "logs/$ABLATION_DIR" --out "logs/$ABLATION_DIR/summary"
    cat "logs/$ABLATION_DIR/summary/results.md"
}
