#!/bin/bash
# cli_generate_spec.sh - `dspark generate --draft`: greedy speculative ids == plain ids for the
# four fixture drafters; --num-samples N --print-ids prints exactly N lines; statistics and
# --compare appear on stderr; bad flags fail with exit 2.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; D="$DSPARK_TEST_DATA/tiny-qwen3"; T="$DSPARK_TEST_TMP/cli_generate_spec"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
P=3,14,15,92,65,35,89,79,323,84
plain=$("$B" generate --model "$D/target" --prompt-ids $P -n 30 --temp 0 --print-ids --threads 1 2>/dev/null)
for h in vanilla gated rnn dflash; do
  spec=$("$B" generate --model "$D/target" --draft "$D/draft-$h" --prompt-ids $P -n 30 --temp 0 --print-ids --threads 1 2>"$T/$h.err")
  check "greedy $h == plain" '[ "$spec" == "$plain" ] && [ -n "$plain" ]'
  check "stats $h" 'grep "tau (accepted drafts + bonus per round)" "$T/$h.err" && grep "cond. acceptance" "$T/$h.err"'
done
# text mode (tiny-chat: a tokenizer and the fixture target's shapes): streamed bytes identical
C="$DSPARK_TEST_DATA/tiny-chat"
"$B" generate --model "$C" --chat "Hello there" -n 24 --temp 0 --threads 1 >"$T/plain.txt" 2>/dev/null
"$B" generate --model "$C" --draft "$D/draft-vanilla" --chat "Hello there" -n 24 --temp 0 --threads 1 >"$T/spec.txt" 2>/dev/null
check "greedy text identical" 'cmp -s "$T/plain.txt" "$T/spec.txt" && [ -s "$T/plain.txt" ]'
# --prompts: several prompts in one run (each printed, then its continuation), the same text
# as plain decoding, statistics and the final "tau X  speedup Yx" line over all of them
printf '%s\n' '{"turns": ["Hello there"]}' '' '{"prompt": "How are you?"}' > "$T/two.jsonl"
"$B" generate --model "$C" --prompts "$T/two.jsonl" -n 16 --temp 0 --threads 1 >"$T/p_plain.txt" 2>/dev/null
"$B" generate --model "$C" --draft "$D/draft-vanilla" --prompts "$T/two.jsonl" -n 16 --temp 0 --threads 1 --compare \
  >"$T/p_spec.txt" 2>"$T/p_spec.err"
check "--prompts: greedy text identical, both prompts" 'cmp -s "$T/p_plain.txt" "$T/p_spec.txt" && grep -q "### prompt 2 of 2" "$T/p_spec.txt"'
check "--prompts: final tau/speedup line" 'tail -1 "$T/p_spec.err" | grep -Eq "^tau [0-9]+\.[0-9]{2}  speedup [0-9]+\.[0-9]{2}x$"'
printf '{"turns": 3}\n' > "$T/bad.jsonl"
"$B" generate --model "$C" --prompts "$T/bad.jsonl" >/dev/null 2>"$T/badp.err"; rc=$?
check "--prompts: bad row is a one-line error naming file:line" '[ $rc -ne 0 ] && grep -q "bad.jsonl:1" "$T/badp.err" && [ $(wc -l < "$T/badp.err") -eq 1 ]'
"$B" generate --model "$C" --prompts "$T/two.jsonl" --prompt hi >/dev/null 2>&1; rc=$?
check "--prompts with --prompt is a usage error" '[ $rc -eq 2 ]'
n=$("$B" generate --model "$D/target" --draft "$D/draft-rnn" --prompt-ids $P -n 5 --temp 1 --num-samples 7 --print-ids --threads 1 2>/dev/null | wc -l)
check "7 samples, 7 lines" '[ "$n" -eq 7 ]'
"$B" generate --model "$D/target" --draft "$D/draft-vanilla" --prompt-ids $P -n 10 --temp 0 --compare --confidence-threshold 0.5 --print-ids --threads 1 >/dev/null 2>"$T/cmp.err"
check "compare prints speedup" 'grep "speedup" "$T/cmp.err"'
"$B" generate --model "$D/target" --prompt-ids $P --compare >/dev/null 2>&1; rc=$?
check "--compare without --draft is a usage error" '[ $rc -eq 2 ]'
"$B" generate --model "$D/target" --draft "$D/draft-rnn" --prompt-ids $P --confidence-threshold 2 >/dev/null 2>&1; rc=$?
check "threshold out of range" '[ $rc -eq 2 ]'
# --policy: every verification policy keeps greedy output (alg1/async measure an SPS profile
# into their own cache directory first); bad names are usage errors naming the flag
for pol in full fixed:1 threshold:0.5 alg1 async; do
  spec=$(XDG_CACHE_HOME="$T/cache" "$B" generate --model "$D/target" --draft "$D/draft-gated" --prompt-ids $P -n 30 --temp 0 --print-ids --threads 1 --policy $pol 2>"$T/pol.err")
  check "greedy --policy $pol == plain" '[ "$spec" == "$plain" ]'
done
check "alg1 measured an SPS profile" 'ls "$T"/cache/dspark/sps-*.json >/dev/null'
"$B" generate --model "$D/target" --draft "$D/draft-gated" --prompt-ids $P --policy alg2 >/dev/null 2>"$T/bad.err"; rc=$?
check "--policy alg2 is a usage error naming the flag" '[ $rc -eq 2 ] && grep -q -- "--policy" "$T/bad.err" && [ $(wc -l < "$T/bad.err") -eq 1 ]'
"$B" generate --model "$D/target" --draft "$D/draft-gated" --prompt-ids $P --policy alg1+bypass >/dev/null 2>&1; rc=$?
check "--policy +bypass is for serve" '[ $rc -eq 2 ]'
exit $fail
