#!/usr/bin/env bash
# The converted SmolLM2 (.dat + model dir) cut into parts that device calls can carry, for
# scripts/device_method_study.sh, which joins ~/smol/part* and checks the sha256 (its header).
#   bash scripts/device_parts.sh [PARTS]      # default 4
# Writes OUT (default .device/smol, ignored by git): partaa.. (split -n PARTS of the .dat),
# dat.sha256, config.json, tokenizer_config.json, chat_template.jinja and tokenizer.json.gz.
# Then prints, per call, what it carries and its size with the tracked tree (a call carries the
# working tree too), and the command that call runs, and exits 1 if one would go over LIMIT_MIB
# (default 64, the device's). Every command makes ~/smol itself: a call may land on a machine
# that an earlier call of the same batch never reached (the seventeenth session's first call got
# no machine, the next ones a fresh one without the folder).
# Call 1 also takes the small files and the build; the last call takes tokenizer.json.gz (gunzip
# it into ~/smol) and can run the first study stage. Why parts: the .dat is 126 MiB.
set -euo pipefail
PARTS=${1:-4}
SMOL=${SMOL:-artifacts/smollm2}
DAT=$SMOL/smollm2-135m-instruct-nvfp4.dat
OUT=${OUT:-.device/smol}
LIMIT_MIB=${LIMIT_MIB:-64}
[ -f "$DAT" ] || { echo "error: $DAT: no such file (make $DAT first)" >&2; exit 1; }
for f in config.json tokenizer_config.json chat_template.jinja tokenizer.json; do
  [ -f "$SMOL/$f" ] || { echo "error: $SMOL/$f: no such file" >&2; exit 1; }
done
[ "$PARTS" -ge 1 ] 2>/dev/null || { echo "error: PARTS $PARTS: a whole number >= 1" >&2; exit 1; }
mkdir -p "$OUT" && rm -f "$OUT"/part*   # only the parts of an earlier cut
split -n "$PARTS" "$DAT" "$OUT/part"
sha256sum < "$DAT" > "$OUT/dat.sha256"
cp "$SMOL/config.json" "$SMOL/tokenizer_config.json" "$SMOL/chat_template.jinja" "$OUT/"
gzip -9 -c "$SMOL/tokenizer.json" > "$OUT/tokenizer.json.gz"
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s + 0 }')
size() { stat -c %s "$@" | awk '{ s += $1 } END { print s + 0 }'; }
parts=("$OUT"/part*)
small=("$OUT/config.json" "$OUT/tokenizer_config.json" "$OUT/chat_template.jinja" "$OUT/dat.sha256")
over=0
for i in "${!parts[@]}"; do
  carry=("${parts[$i]}")
  [ "$i" = 0 ] && carry+=("${small[@]}")
  [ "$i" = $(( ${#parts[@]} - 1 )) ] && carry+=("$OUT/tokenizer.json.gz")
  total=$(( tree + $(size "${carry[@]}") ))
  mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
  echo "call $(( i + 1 )): ${carry[*]} ($mib MiB with the tracked tree)"
  cmd="mkdir -p ~/smol && cp ${carry[*]} ~/smol/"
  [ "$i" = 0 ] && cmd+=" && (python3 cuda/build.py 2>&1 | tail -1; mkdir -p build && touch build/.ext-stamp)"
  [ "$i" = $(( ${#parts[@]} - 1 )) ] && cmd+=" && gunzip -f ~/smol/tokenizer.json.gz && ls ~/smol"
  echo "  command: $cmd"
  if [ "$total" -gt $(( LIMIT_MIB * 1048576 )) ]; then over=1; fi
done
if [ "$over" = 1 ]; then
  echo "error: a call would carry over $LIMIT_MIB MiB: run again with more parts" >&2
  exit 1
fi
