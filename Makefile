# fracture — the table of contents. Every target sets itself up (idempotently).
#
#   make demo     the main job on the embedded base: task splits, the demo sweep, export, serving with
#                 replayed traffic (and Prometheus when installed), the analysis and the report
#   make test     the default test suite (CPU, offline, a few minutes)
#
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_EVAL_ITEMS ?= 10  # items of each split replayed to every served model in `make demo` (a sample showing the
                     # loop: the headline comes from the offline evaluation of 400 items per split)
STAMP  := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-installed-stamp

.PHONY: help setup setup-dev demo test test-slow lint data train sweep export report watch pretrain bench bench-prune bench-export \
        bench-serving gpu-check up traffic down dashboards clean study

help:             ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The pinned dependencies go in with uv (about 5 s where pip takes a minute or more: parallel downloads, no
# per-package build steps); pip does it where uv cannot reach an index (e.g. an index set only in pip.conf)
UV_VERSION := 0.13.9
INSTALL = $(VENV)/bin/uv pip install --quiet --python $(PY) $(1) || $(VENV)/bin/pip install --quiet $(1)

setup: $(STAMP)   ## create .venv and install fracture with its pinned runtime dependencies
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned and with pip (it honours a local wheel or index set in pip.conf): an unpinned torch
	# would pull a multi-GB CUDA build
	$(VENV)/bin/pip install --quiet torch==2.13.0 uv==$(UV_VERSION)
	$(call INSTALL,-e .)
	touch $(STAMP)

# the test and lint tools (pytest, ruff, the reference implementations tests compare against, the API clients the
# server is tested with: openai, and lm-eval from the `eval` extra) come on top, only for the targets that use
# them: `make demo` on a fresh machine does not wait for them
# a variable: a comma written inside $(call ...) would split its argument
DEV_EXTRAS := .[dev,eval]
setup-dev: $(DEV_STAMP)
$(DEV_STAMP): $(STAMP)
	$(call INSTALL,-e '$(DEV_EXTRAS)')
	touch $(DEV_STAMP)

data: setup       ## write the task splits (JSONL) to data/<config-hash>/
	$(PY) -m tasks --config tasks/configs/default.yaml --out data/

train: sweep
sweep: setup      ## fine-tune the demo population (runs/demo/), resumable
	$(PY) -m train sweep --config train/configs/demo.yaml

export: setup     ## the default variants (onnx-fp32, ort-int4, ort-int2, noise@ort-int2) of every final checkpoint, checked and evaluated
	$(PY) -m export --sweep runs/demo

report: setup     ## partial correlations of the demo sweep -> reports/demo/{summary.json,report.html}
	$(PY) -m telemetry analyze --accuracies runs/demo/accuracy.csv --out reports/demo

STUDY_VARIANTS := onnx-fp32,ort-int8,ort-int4,ort-int2,sim-w3,noise@ort-int8,noise@ort-int4,noise@ort-int2,noise@sim-w3
study: setup data  ## the study population (train/configs/study.yaml, ~300 runs, an hour or more): sweep, every variant and its noise control, report
	$(PY) -m train sweep --config train/configs/study.yaml
	$(PY) -m export --sweep runs/study --variants $(STUDY_VARIANTS)
	$(PY) -m telemetry analyze --accuracies runs/study/accuracy.csv --out reports/study

watch: setup      ## recompute from Prometheus every 30 s; gauges on 127.0.0.1:9108/metrics
	$(PY) -m telemetry watch --prometheus http://127.0.0.1:9090 --port 9108

demo: setup data sweep export  ## the main job: splits, sweep, export, serve + replay + Prometheus, analysis, report
	$(PY) -m deploy.demo --sweep runs/demo --eval-items $(DEMO_EVAL_ITEMS)

# `make up SERVE_PORT=8001 WATCH_PORT=9109 PROM_PORT=9091` where the defaults are taken
SERVE_PORT ?= 8000
WATCH_PORT ?= 9108
PROM_PORT ?= 9090
up: setup         ## start Prometheus (if installed), the server and the telemetry watcher on 127.0.0.1
	$(PY) -m deploy.local up --sweep runs/demo --port $(SERVE_PORT) --watch-port $(WATCH_PORT) \
		--prometheus-port $(PROM_PORT)

TRAFFIC_EVAL_ITEMS ?= 20
traffic: setup    ## replay labelled eval items to the server `make up` started (fills the dashboards)
	$(PY) -m serve replay --url http://127.0.0.1:$(SERVE_PORT) --sweep runs/demo --eval-items $(TRAFFIC_EVAL_ITEMS) \
		--out runs/demo/served-accuracy.csv

down:             ## stop what `make up` started (by process id)
	$(PY) -m deploy.local down

dashboards: setup  ## regenerate dashboards/json/ from dashboards/build.py
	$(PY) -m dashboards build

pretrain: setup   ## rebuild models/embedded-base (about 20 minutes on 2 cores; demo never needs it)
	$(PY) -m train pretrain --config train/configs/pretrain.yaml

bench: setup      ## every benchmark, each against its baseline: bench/results/<timestamp>-all.json + a table
	$(PY) -m bench all --sweep runs/demo

bench-prune: setup  ## remove what bench/cache/ holds for other versions of fracture or its tools (1.2 GB each)
	$(PY) -m bench prune

bench-serving: setup  ## req/s, p50/p99 at concurrency 1/8/32: fracture vs naive transformers server vs HTTP floor, + metrics/guards over HTTP
	$(PY) -m bench serving --sweep runs/demo

bench-export: setup  ## decode tokens/s: export/runtime.py vs transformers generate vs ORTModelForCausalLM
	$(PY) -m bench decode --sweep runs/demo

gpu-check: setup-dev  ## on a CUDA machine: bf16 fine-tuning of pythia-70m's architecture, bnb variants, TensorRT
	$(PY) -m bench.gpu_check

test: setup-dev      ## CPU-only, offline tests (slow and gpu markers deselected)
	$(PY) -m pytest -q

test-slow: setup-dev ## also the slow tests
	$(PY) -m pytest -q -m 'not gpu'

lint: setup-dev      ## ruff
	$(VENV)/bin/ruff check .

clean:            ## remove generated data and runs (keeps .venv and models/)
	rm -rf data runs reports .run
