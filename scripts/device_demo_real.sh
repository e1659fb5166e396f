#!/usr/bin/env bash
# Issue 8 on the device machine in one go: build the extension, sweep the recipe variants of
# data/stages/real-en.args on the DEV probes (JOBS at once), then run and time `make demo-real`
# with the chosen flags (the held-out probes are read once, there). Everything is logged under
# $OUT (DevLog entries in $OUT/DevLog.md, to be appended to doc/DevLog.md by hand).
# Needs artifacts/smollm2/ (the converted SmolLM2: `make convert-gguf`, or unpacked from a copy).
set -euo pipefail
OUT=${OUT:-/tmp/device-out}
JOBS=${JOBS:-8}
mkdir -p "$OUT"
export NVFP4LAB_DEVLOG="$OUT/DevLog.md" NVFP4LAB_ARTIFACT_LIST="$OUT/list.md"
test -f artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat || { echo "error: artifacts/smollm2/ missing"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 cuda/build.py 2>&1 | tail -2
mkdir -p build && touch build/.ext-stamp
t0=$(date +%s)
set +e
make --no-print-directory sweep-real DEVICE=cuda JOBS="$JOBS" SWEEP="${SWEEP:-data/stages/real-en.sweep}" \
    SWEEP_FLAGS="--work-dir /tmp/sweep --chosen $OUT/chosen.flags --timeout ${VARIANT_TIMEOUT:-330}" \
    > "$OUT/sweep.txt" 2>&1
echo "sweep exit $? in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/sweep.txt"
cp /tmp/sweep/*.log "$OUT/" 2>/dev/null
grep -v '^\[guard\] PID=' "$OUT/sweep.txt" | tail -25
t1=$(date +%s)
make --no-print-directory demo-real DEVICE=cuda TRAIN_FLAGS="$(cat "$OUT/chosen.flags")" \
    > "$OUT/demo-real.txt" 2>&1
echo "demo-real exit $? in $(( $(date +%s) - t1 )) s" | tee -a "$OUT/demo-real.txt"
grep -v '^\[guard\] PID=' "$OUT/demo-real.txt" | tail -60
