#!/usr/bin/env bash
# bench_cuda's program on the CPU at tiny sizes (a logic check, it measures nothing): every
# section runs, --ablate prints its rows, --json writes a report with them (through a temporary
# file), and bad input is a one-line error: an unknown flag, a bad value, an unwritable folder
# (checked before measuring; bench_train's and bench_cpu's reports too).
# ctest: labels=cli
set -uo pipefail
BIN=${DSPARK_BIN:?}; TMP=${DSPARK_TEST_TMP:-/tmp}/cli_bench.$$
B=$(dirname "$BIN")/bench/bench_cuda
mkdir -p "$TMP"
pass=0; fail=0
has() { if grep -qF -- "$2" <<<"$1"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: output lacks '$2'"; fi; }
one_line_error() { # cmd... : must fail with exactly one stderr line containing $NEEDLE
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == *"$NEEDLE"* ]]; then pass=$((pass+1));
  else fail=$((fail+1)); echo "FAIL error for: $* -> rc $rc '$out'"; fi
}
out=$("$B" --device cpu --tiny --ablate --batch 2 --reps 2 --layers 2 --json "$TMP/b.json" 2>&1); rc=$?
[ $rc -eq 0 ] && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL: bench_cuda rc $rc"; printf '%s\n' "$out" | tail -5; }
for want in "decode, 1 token" "8 tokens in one forward" "every op" "without attention" "products alone" "without the products" \
            "batched decode" "drafting at context" "speculative, tau = 5"; do has "$out" "$want"; done
json=$(cat "$TMP/b.json" 2>/dev/null)
for want in '"floor_ms"' '"steps": [' '"batch": [' '"synthetic_e2e"' '"ablation": [{"step": "every op"'; do has "$json" "$want"; done
ls "$TMP"/b.json.tmp.* >/dev/null 2>&1 && { fail=$((fail+1)); echo "FAIL: a temporary report was left behind"; } || pass=$((pass+1))
[ "$("$B" --help | head -c 17)" = "usage: bench_cuda" ] && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL: --help"; }
NEEDLE="unknown flag" one_line_error "$B" --device cpu --tiny --bogus
NEEDLE="bad arguments" one_line_error "$B" --device cpu --tiny --ctx 5
NEEDLE="not writable" one_line_error "$B" --device cpu --tiny --json "$TMP/none/b.json"
# bench_train and bench_cpu write their reports the same way (bench/json_report.h)
T=$(dirname "$BIN")/bench/bench_train
"$T" --anchors 1 --seq 16 --steps 1 --hidden 64 --layers 1 --vocab 64 --ffn 64 --json "$TMP/t.json" >/dev/null 2>&1
has "$(cat "$TMP/t.json" 2>/dev/null)" '"block_tokens_per_s"'
NEEDLE="not writable" one_line_error "$T" --json "$TMP/none/t.json"
NEEDLE="not writable" one_line_error "$(dirname "$BIN")/bench/bench_cpu" --json "$TMP/none/c.json"
rm -rf "$TMP"
echo "cli_bench: $pass passed, $fail failed"
[ $fail -eq 0 ]
