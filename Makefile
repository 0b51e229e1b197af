# Set-up, tests and a demo on the synthetic world. Everything runs on CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= data/demo
DEMO_FLAGS := --datasets_folder $(DEMO_DIR) --dataset_name synthetic --resize 64 64 --device cpu

.PHONY: venv test demo clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m tools.synthetic_world --out $(DEMO_DIR) --seed 0
	$(PY) train.py $(DEMO_FLAGS) --pretrain none --lr 1e-3 --train_batch_size 8 --negs_num_per_query 5 \
		--neg_samples_num 300 --cache_refresh_rate 200 --queries_per_epoch 600 --epochs_num 4 \
		--infer_batch_size 64 --num_workers 2 --precision bf16 --save_dir demo
	$(PY) eval.py $(DEMO_FLAGS) --resume $$(ls -td logs/demo/*/ | head -1)best_model.pth --save_dir demo_eval

clean:
	rm -rf $(VENV) logs data/demo
