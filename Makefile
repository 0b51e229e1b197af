# Set-up, tests and a demo on the synthetic world. Everything runs on CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= data/demo
DEMO_FLAGS := --datasets_folder $(DEMO_DIR) --dataset_name synthetic --resize 32 32 --device cpu
STUDY_DIR ?= logs/study
STUDY_FLAGS ?=

.PHONY: venv test lint demo clean gpu-check

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

lint: venv  # ruff, configured in pyproject.toml
	$(VENV)/bin/ruff check .

demo: venv
	$(PY) -m tools.synthetic_world --out $(DEMO_DIR) --seed 1 --image_size 32 --overwrite \
		--train_db 1500 --train_q 750 --val_db 200 --val_q 200 --test_db 300 --test_q 300
	$(PY) train.py $(DEMO_FLAGS) --pretrain none --aggregation gem --lr 3e-3 --warmup_epochs 0.5 \
		--scheduler cosine --train_batch_size 8 --negs_num_per_query 3 --neg_samples_num 200 --mining partial \
		--cache_refresh_rate 100 --queries_per_epoch 500 --epochs_num 5 --patience 10 --infer_batch_size 64 \
		--num_workers 0 --save_dir demo
	$(PY) eval.py $(DEMO_FLAGS) --resume $$(ls -td logs/demo/*/ | head -1)best_model.pth \
		--infer_batch_size 64 --num_workers 0 --save_dir demo_eval

.PHONY: study
study: venv  # every experiment of study/plan.toml (synthetic worlds, or DATASETS_FOLDER's Pitts30k/St Lucia)
	$(PY) study.py --out $(STUDY_DIR) $(STUDY_FLAGS)

gpu-check: venv  # one CUDA GPU: benchmark, fp16/bf16 trainings at 480x640, eval flat/ivfpq, resume
	$(PY) -m tools.gpu_check

.PHONY: report
report: venv  # the PDF report of a study folder (phony: report/ is also a folder of the repository)
	$(PY) report.py $(STUDY_DIR)

clean:
	rm -rf $(VENV) logs data/demo
