#!/usr/bin/env bash
# one-off device call (not committed): d2 seed 1 again on GPU 1 beside the CUDA tests + bench on GPU 0
set -u
export PYTHONUNBUFFERED=1 NVFP4LAB_DEVLOG=$OUT/DevLog.md NVFP4LAB_ARTIFACT_LIST=$OUT/list.md
ls artifacts/smollm2/*.dat build/.ext-stamp || exit 1
( t=$(date +%s); CUDA_VISIBLE_DEVICES=1 python3 scripts/train.py --recipe data/stages/method-study-en.args --unlikelihood-weight 1 --context-share 0.3 --lr-head 3e-4 --steps 240 --probe-every 40 --kl-weight 4 --checkpoint-layers off --mix data/real-whoami-en-v2.tsv:8,data/real-anchor-en-v1.tsv:2:anchor,data/real-anchor-wide-en-v1.tsv:2:anchor,data/real-neighbours-en-v1.tsv:4:neighbour --identity-context-share 0.3 --lr-schedule cosine --warmup-steps 20 --lr 5e-4 --step-chunk-rows 16 --lr 7e-4 --sparse-share 0.01 --sparse-at 60 --self-kl-rows 32 --self-kl-every 2 --self-kl-candidates 128 --self-kl-from 120 --self-repeat-ul 1 --sparse-share 0.015 --identity-perturb 0.3 --identity-mine-rows 16 --identity-mine-candidates 128 --identity-mine-every 2 --identity-mine-from 60 --keep-perturb 0.3 --replay-fix-wrong --seed 1    --heldout data/suite-en-dev-v2.tsv --monitor data/suite-en-monitor-v1.tsv --input-dat artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat    --model-dir artifacts/smollm2 --output-dat artifacts/sweep/repro-d2-s1.dat --stage repro-d2-s1 --device cuda > $OUT/repro-d2-s1.log 2>&1
   echo "repro exit $? $(( $(date +%s) - t )) s" ) &
export PYTHONPATH=~/shim
CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -k cuda tests/test_decode.py tests/test_decode_attention.py tests/test_batch_decode.py > $OUT/cuda-tests.log 2>&1
echo "cuda tests exit $?"; tail -n 3 $OUT/cuda-tests.log
t=$(date +%s); CUDA_VISIBLE_DEVICES=0 python3 scripts/bench.py --static --profile --skip-train --skip-stage --model-dir ~/qwen4b > $OUT/bench.log 2>&1
echo "bench exit $? $(( $(date +%s) - t )) s"
wait
grep -E "monitor at|collapse|: (success|not-reached|collapse)" $OUT/repro-d2-s1.log | cut -c1-260
tail -n 45 $OUT/bench.log
