#!/usr/bin/env bash
# On the GPU machine: bench_cuda's step times for several backend settings in one call,
# interleaved (ROUNDS rounds of every setting, so drift hits them all alike); prints the rows
# an A/B is read from. Settings are env assignments, one quoted word each; X=0 is the default.
#   usage: bench/gpu_ab.sh [ROUNDS] 'X=0' 'DSPARK_CUDA_NORM_PIECES=1' ...
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu/env.sh
rounds=${1:-2}; shift || true
[ $# -gt 0 ] || set -- X=0
for r in $(seq "$rounds"); do
    for s in "$@"; do
        echo "== $s (round $r)"
        env $s timeout 150 "$B/bench_cuda" --ctx 512 --reps 5 --batch 0 2>&1 |
            grep -E "memory floor|^decode, 1|^(2|8|16|64) tokens in|tau = 5|^plain|alone:"
    done
done
