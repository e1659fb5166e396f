# qwen3-nvfp4-identity: every user-facing command is a target here; each target is a thin call
# of one script in scripts/. Variables can be overridden: make stageG BASE=/path/to/base.dat
SHELL := /bin/bash
PY ?= python3
TORCH_VERSION ?= 2.13.0
EXT_SOURCES := $(wildcard cuda/*.cpp cuda/*.cu cuda/*.h cuda/*.cuh cuda/build.py)
EXT_STAMP := build/.ext-stamp

.PHONY: setup build test

setup:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	$(MAKE) build

build: $(EXT_STAMP)

$(EXT_STAMP): $(EXT_SOURCES)
	$(PY) cuda/build.py
	@mkdir -p build && touch $@

test: build
	$(PY) -m pytest -q tests
