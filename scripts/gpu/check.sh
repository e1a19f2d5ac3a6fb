#!/usr/bin/env bash
# On the GPU machine: the cuda tests (failing, not skipping, without a GPU), then greedy token
# ids of models/default on the GPU against the CPU, plain and speculative, for the default and
# each backend setting given (env assignments, one quoted word per setting).
#   usage: scripts/gpu/check.sh ['DSPARK_CUDA_NORM_PIECES=1' ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
fail=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in test_cuda test_cuda_engine test_cuda_sample test_cuda_warp_sum; do
    DSPARK_REQUIRE_CUDA=1 "$B/$t" > "/tmp/$t.log" 2>&1; rc=$?
    echo "$t: rc $rc, $(tail -1 "/tmp/$t.log")"
    [ $rc = 0 ] || { grep -iE "fail" "/tmp/$t.log" | head -5; fail=1; }
done
D=models/default
[ -d $D/target ] || D=tests/data/tiny-qwen3
draft=$D/dspark; [ -d "$draft" ] || draft=$D/draft-vanilla
prompts=$D/demo_prompts.jsonl
args=(--model $D/target -n 48 --temp 0 --print-ids)
if [ -f "$prompts" ]; then args+=(--prompts "$prompts"); else args+=(--prompt-ids 1,2,3,4,5); fi
"$B/dspark" generate "${args[@]}" --device cpu > /tmp/ids_cpu.txt 2>/dev/null || { echo "CPU generate failed"; exit 1; }
for s in "" "$@"; do
    for mode in plain spec; do
        extra=(); [ $mode = spec ] && extra=(--draft "$draft")
        if ! env $s "$B/dspark" generate "${args[@]}" "${extra[@]}" --device cuda > /tmp/ids_gpu.txt 2> /tmp/ids_gpu.err; then
            r="FAILED: $(tail -1 /tmp/ids_gpu.err)"; fail=1
        elif cmp -s /tmp/ids_gpu.txt /tmp/ids_cpu.txt; then r="the CPU's ids"
        else r="DIFFERENT ids"; fail=1; fi
        echo "greedy ${s:-default} $mode: $r ($(wc -l < /tmp/ids_gpu.txt) prompts)"
    done
done
exit $fail
