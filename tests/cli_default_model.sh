#!/bin/bash
# cli_default_model.sh - the shipped models/default: the target loads with its tokenizer, both
# drafters load against it, and greedy speculative decoding gives exactly plain greedy's ids
# (DSpark with its calibrated confidences and with the full block, DFlash with the full block).
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; D="$DSPARK_TEST_DATA/../../models/default"; T="$DSPARK_TEST_TMP/cli_default_model"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
if [ ! -d "$D/target" ]; then echo "models/default not shipped: skipped"; exit 77; fi
N=48
head -2 "$D/demo_prompts.jsonl" > "$T/p.jsonl"
"$B" generate --model "$D/target" --prompts "$T/p.jsonl" -n $N --temp 0 --threads 1 > "$T/plain.txt" 2>/dev/null
check "plain greedy text" '[ -s "$T/plain.txt" ]'
for run in "dspark --policy threshold:0.5" "dspark" "dflash"; do
  set -- $run
  XDG_CACHE_HOME="$T/cache" "$B" generate --model "$D/target" --draft "$D/$1" "${@:2}" --prompts "$T/p.jsonl" -n $N --temp 0 --threads 1 \
    > "$T/spec.txt" 2>"$T/spec.err"
  check "greedy $run == plain" 'cmp -s "$T/plain.txt" "$T/spec.txt" && grep -q "tau (accepted" "$T/spec.err"'
done
exit $fail
