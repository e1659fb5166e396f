#!/usr/bin/env bash
# Issues 12-14 on the device machine (an H200), in stages that each fit one device call:
#   bash scripts/device_method_study.sh baseline   # make eval of the SmolLM2 base; today's
#                                                  # real-en-v2 on 5 seeds (held-out, side by side)
#   bash scripts/device_method_study.sh study      # GRID (default method-study-en.sweep) x seeds
#                                                  # 1 2 3 on DEV (DEV, default suite-en-dev-v2.tsv;
#                                                  # rounds 1-16 ran on -v1); JOBS runs at once (default 6
#                                                  # a GPU: v11-like runs took 277 s at 4 a GPU, 346 s
#                                                  # at 6, 465 s or over 520 s at 7-8, round 21);
#                                                  # RESUME=1 reuses the judgments already in
#                                                  # artifacts/sweep (sweep.py --resume): a second call
#                                                  # runs only what timed out; REUSE=DIR first copies
#                                                  # DIR's *.eval.json there (judgments carried in from
#                                                  # an earlier machine, e.g. a round's judgments kept
#                                                  # in artifacts/rounds/rNN by scripts/keep_judgments.py);
#                                                  # SEEDS (default "1 2 3");
#                                                  # RULE (sweep.py --rule: score, the default, or
#                                                  # misses, round 25's)
#   bash scripts/device_method_study.sh final      # the chosen variant: one timed make demo-real
#                                                  # (+ both runners), then 5 seeds on held-out
#                                                  # (SINGLE=0: the 5 seeds only; VARIANT=NAME
#                                                  # GRID=F: that row's flags, e.g. real-en-v6 =
#                                                  # z2-s1-late120-mine128-repul1 of -r14.sweep)
#   bash scripts/device_method_study.sh soup       # round 33: GRID's first row on three SEEDS
#                                                  # (sweep.py on DEV), the median merge of their
#                                                  # three edits (merge_edits.py) judged on DEV by
#                                                  # eval.py, pooled against the single runs
#                                                  # (pool_judgments.py); REUSE as for study
#   bash scripts/device_method_study.sh revert     # GRID's first row on SEEDS, then each edit
#                                                  # judged on DEV with one group put back at a
#                                                  # time (revert_groups.py; BAND layers a band,
#                                                  # default 5), read by round 34's rule
#                                                  # (read_revert.py: artifacts/sweep/next.sweep
#                                                  # if a part is picked); REUSE as for study
#   bash scripts/device_method_study.sh floor      # noise_floor.py on DEV: random one-step code
#                                                  # moves of 0-1.3% of the decoder's codes
#   bash scripts/device_method_study.sh prepare    # only the join and the build (for a call
#                                                  # that runs two stages side by side: start the
#                                                  # second with `&` and `wait` for it, or it is
#                                                  # killed when the call ends)
# The converted SmolLM2 (126 MiB) travels in parts cut by scripts/device_parts.sh (4 since the
# tracked tree grew to 20 MiB: a call carries 64 MiB with the tree), copied to ~/smol in earlier
# calls; it is joined into artifacts/smollm2/ here. Logs, JSON judgments and the DevLog entries
# come back under $OUT (results.tgz); DevLog entries are appended to doc/DevLog.md by hand.
set -uo pipefail
STAGE=${1:?usage: device_method_study.sh baseline|study|soup|revert|final|floor|prepare}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export NVFP4LAB_DEVLOG="$OUT/DevLog.md" NVFP4LAB_ARTIFACT_LIST="$OUT/list.md" PYTHONUNBUFFERED=1
SMOL=artifacts/smollm2
DEV=${DEV:-data/suite-en-dev-v2.tsv}
DEVICE=${DEVICE:-cuda}   # study and soup only: DEVICE=cpu rehearses a stage here (slowly)
DAT=$SMOL/smollm2-135m-instruct-nvfp4.dat
if [ ! -f "$DAT" ]; then
  # joined beside it and moved into place only once its hash matches: a join that fails (a part
  # not uploaded yet) must not leave a .dat that the next call takes as joined (round 29's first
  # study call trained on an empty one)
  mkdir -p $SMOL && cat ~/smol/part* > "$DAT.joining" && cp ~/smol/*.json ~/smol/*.jinja $SMOL/ \
    || { rm -f "$DAT.joining"; exit 1; }
  [ "$(sha256sum < "$DAT.joining" | cut -d' ' -f1)" = "$(cut -d' ' -f1 ~/smol/dat.sha256)" ] \
    || { echo "error: the joined .dat differs from the one split here"; rm -f "$DAT.joining"; exit 1; }
  mv "$DAT.joining" "$DAT"
fi
if [ ! -f build/.ext-stamp ]; then
  t=$(date +%s); python3 cuda/build.py 2>&1 | tail -1; mkdir -p build && touch build/.ext-stamp
  echo "build $(( $(date +%s) - t )) s"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# device time is wall time: on a host with several GPUs, runs and seeds go to them in turn
GPUS=${GPUS:-$(nvidia-smi -L | grep -c "^GPU")}
timed() { local t=$(date +%s); "$@"; local rc=$?; echo "[$1 ... exit $rc, $(( $(date +%s) - t )) s]"; return $rc; }
sweep_dev() {   # GRID x SEEDS on DEV (sweep.py), as the study stage runs it; ~/chosen.flags after
  if [ -n "${REUSE:-}" ]; then mkdir -p artifacts/sweep && cp "$REUSE"/*.eval.json artifacts/sweep/ || exit 1; fi
  timed timeout $(( ${JOB_TIMEOUT:-540} + 30 )) python3 scripts/sweep.py --recipe data/stages/method-study-en.args \
      --variants ${GRID:-data/stages/method-study-en.sweep} --seeds "${SEEDS:-1 2 3}" --dev-suite $DEV \
      --monitor data/suite-en-monitor-v1.tsv --input-dat $DAT --model-dir $SMOL --device $DEVICE \
      --jobs ${JOBS:-$((6 * GPUS))} --gpus $GPUS --timeout ${JOB_TIMEOUT:-540} --work-dir artifacts/sweep --chosen artifacts/sweep/chosen.flags \
      --rule ${RULE:-score} $([ "${RESUME:-0}" = 1 ] && echo --resume) \
      > artifacts/study.log 2>&1
  cp artifacts/sweep/chosen.flags ~/chosen.flags 2>/dev/null
  grep -v '^\[guard\] PID=' artifacts/study.log | tail -n 40
}
pack() { tar czf "$OUT/results-$STAGE.tgz" "$@" 2>/dev/null; ls -la "$OUT"; }
sweep_first_row() {   # soup, revert: V = GRID's first row, trained on SEEDS on DEV (rule misses);
  # its judgments go under $OUT at once, so a call cut short by the session's device time still
  # brings them back (the stage's last pack overwrites this one)
  V=$(awk -F'\t' '!/^#/ && NF == 2 { print $1; exit }' "${GRID:?give GRID}")
  RULE=misses sweep_dev
  pack artifacts/sweep/*.eval.json artifacts/sweep/*.log artifacts/study.log > /dev/null
}

case $STAGE in
prepare) ;;
floor)
  timed python3 scripts/noise_floor.py --base $DAT --model-dir $SMOL --suite data/suite-en-dev-v1.tsv \
      --shares "${SHARES:-0 0.001 0.003 0.013}" --seeds "1 2 3" --out artifacts/noise-floor.json \
      > artifacts/noise-floor.log 2>&1
  tail -n 25 artifacts/noise-floor.log
  pack artifacts/noise-floor.json artifacts/noise-floor.log
  ;;
baseline)
  # CUDA kernels == CPU kernels bit for bit (the new torchao rule and requantize_delta included)
  timed python3 scripts/gpu_check.py > artifacts/gpu-check.log 2>&1; grep -E "FAIL|failures|passed" artifacts/gpu-check.log | tail -n 5
  # the base itself on the held-out suite (identity 0, its own context copying) and the eval time
  timed python3 scripts/eval.py --weight $DAT --base $DAT --suite data/suite-en-heldout-v1.tsv \
      --model-dir $SMOL --device cuda --out artifacts/base.eval.json > artifacts/base-eval.log 2>&1
  tail -n 25 artifacts/base-eval.log
  # the study's replay cache (base answers of anchors + neighbours), made once before the sweep
  python3 scripts/train.py --recipe data/stages/method-study-en.args --steps 1 --probe-every 0 \
      --heldout data/suite-en-dev-v1.tsv --input-dat $DAT --model-dir $SMOL --device cuda \
      --output-dat artifacts/warm.dat --stage warm > artifacts/warm.log 2>&1 &
  timed make --no-print-directory demo-real DEVICE=cuda GPUS=$GPUS SEEDS="1 2 3 4 5" \
      REAL_RECIPE=data/stages/real-en-v2.args DEMO_REAL_OUT=artifacts/v2.dat > artifacts/v2-seeds.log 2>&1
  wait
  grep -v '^\[guard\] PID=' artifacts/v2-seeds.log | tail -n 20
  pack artifacts/*.eval.json artifacts/*.log
  ;;
study)
  sweep_dev
  # the replay cache too: the base answers the keep rows learn (--replay-stock-kl counts them)
  pack artifacts/sweep/*.eval.json artifacts/sweep/*.log artifacts/study.log artifacts/cache/replay-*.tsv
  ;;
soup)
  # round 33: GRID's first row on three SEEDS as single runs (judged on DEV by train.py), then the
  # median merge of their three edits (scripts/merge_edits.py) judged on DEV by eval.py with the
  # study recipe's thresholds, and the first seed's own .dat judged again by eval.py (the check
  # that eval.py's verdict of an exported .dat is train.py's); REUSE brings earlier triples'
  # kept judgments (singles and merges) into the pooled table
  set -- ${SEEDS:?give three SEEDS}
  [ $# = 3 ] || { echo "error: SEEDS must be three seeds, not '$SEEDS'"; exit 1; }
  sweep_first_row
  MERGED=artifacts/sweep/soup-$V-s$1-$3
  timed python3 scripts/merge_edits.py --base $DAT --out $MERGED.dat \
      --edits artifacts/sweep/sweep-$V-s$1.dat artifacts/sweep/sweep-$V-s$2.dat artifacts/sweep/sweep-$V-s$3.dat \
      > $MERGED.merge.log 2>&1
  tail -n 8 $MERGED.merge.log
  timed python3 scripts/eval.py --weight $MERGED.dat --base $DAT --suite $DEV --model-dir $SMOL \
      --device $DEVICE --thresholds-of data/stages/method-study-en.args --out $MERGED.eval.json > $MERGED.eval.log 2>&1
  tail -n 3 $MERGED.eval.log
  timed python3 scripts/eval.py --weight artifacts/sweep/sweep-$V-s$1.dat --base $DAT --suite $DEV \
      --model-dir $SMOL --device $DEVICE --thresholds-of data/stages/method-study-en.args --out artifacts/sweep/recheck-$V-s$1.eval.json \
      > artifacts/sweep/recheck-$V-s$1.eval.log 2>&1
  python3 - "$V" "$1" <<'PY'
import json, sys
v, s = sys.argv[1], sys.argv[2]
a = json.load(open(f"artifacts/sweep/sweep-{v}-s{s}.eval.json"))["summary"]
b = json.load(open(f"artifacts/sweep/recheck-{v}-s{s}.eval.json"))["summary"]
keys = ("identity", "nearmiss_leak", "context_leak", "greeting_intro", "facts_kept", "loops")
print("eval.py on the exported .dat against train.py's judgment:",
      "; ".join(f"{k} {a[k]['k']}/{a[k]['n']} vs {b[k]['k']}/{b[k]['n']}" for k in keys))
PY
  python3 scripts/pool_judgments.py "single=artifacts/sweep/sweep-$V-s*.eval.json" \
      "soup=artifacts/sweep/soup-$V-*.eval.json" | sed 's/`[^`]*`/`..`/' | tail -n 8
  pack artifacts/sweep/*.eval.json artifacts/sweep/*.log artifacts/sweep/*.merge.json artifacts/study.log
  ;;
revert)
  # GRID's first row on SEEDS (sweep.py on DEV), then each run's edit judged on DEV with one group
  # put back at a time (scripts/revert_groups.py: embed, norms, head, bands of BAND layers), the
  # runs side by side: where in the network the identity and the lost facts live
  sweep_first_row
  for S in ${SEEDS:?give SEEDS}; do
    [ -f artifacts/sweep/sweep-$V-s$S.dat ] || { echo "seed $S: nothing exported"; continue; }
    timed python3 scripts/revert_groups.py --base $DAT --edit artifacts/sweep/sweep-$V-s$S.dat \
        --suite $DEV --model-dir $SMOL --device $DEVICE --band-width ${BAND:-5} \
        --thresholds-of data/stages/method-study-en.args > artifacts/sweep/revert-$V-s$S.log 2>&1 &
  done
  wait
  for S in $SEEDS; do grep -A 14 "^| put back" artifacts/sweep/revert-$V-s$S.log | sed 's/^/  /'; done
  # round 34's reading rule (scripts/read_revert.py): the next round's grid, if a part holds the
  # lost facts and not the identity (artifacts/sweep/next.sweep, read by a later call's study)
  rm -f artifacts/sweep/next.sweep
  python3 scripts/read_revert.py artifacts/sweep/sweep-$V-s*.revert.json --control "$GRID:$V" \
      --grid-out artifacts/sweep/next.sweep --out artifacts/sweep/reading.json 2>&1 | tee artifacts/sweep/reading.log
  pack artifacts/sweep/*.eval.json artifacts/sweep/*.revert.json artifacts/sweep/*.log artifacts/study.log \
      artifacts/sweep/reading.json artifacts/sweep/next.sweep
  ;;
final)
  # the flags: VARIANT's row of GRID (a fresh machine, e.g. real-en-v6 = round 14's z2), else the
  # study call's choice in ~/chosen.flags
  if [ -n "${VARIANT:-}" ]; then
    FLAGS=$(awk -F'\t' -v v="$VARIANT" '$1 == v { print $2 }' "${GRID:?give GRID with VARIANT}")
    [ -n "$FLAGS" ] || { echo "error: no variant $VARIANT in $GRID"; exit 1; }
  else
    FLAGS=$(cat ~/chosen.flags) || exit 1
  fi
  echo "chosen flags: $FLAGS"
  if [ "${SINGLE:-1}" = 1 ]; then   # SINGLE=0: only the seeds (the single run's wall time is known)
    timed make --no-print-directory demo-real DEVICE=cuda REAL_RECIPE=data/stages/method-study-en.args \
        TRAIN_FLAGS="$FLAGS" DEMO_REAL_OUT=artifacts/final.dat > artifacts/final-single.log 2>&1
    grep -v '^\[guard\] PID=' artifacts/final-single.log | tail -n 30
  fi
  timed make --no-print-directory demo-real DEVICE=cuda GPUS=$GPUS SEEDS="1 2 3 4 5" REAL_RECIPE=data/stages/method-study-en.args \
      TRAIN_FLAGS="$FLAGS" DEMO_REAL_OUT=artifacts/final.dat > artifacts/final-seeds.log 2>&1
  grep -v '^\[guard\] PID=' artifacts/final-seeds.log | tail -n 20
  pack artifacts/*.eval.json artifacts/*.log
  ;;
esac
exit 0
