#!/usr/bin/env bash
# The device call for bench/patches/att-pipe.diff (docs/bench-cuda.md, last section): on this machine
# `git apply bench/patches/att-pipe.diff && scripts/gpu/pack.sh`; on the GPU machine (carry
# build-cuda/gpu-pkg.tar.xz) `bash bench/patches/att-pipe.sh`. Greedy ids and tests with each setting, then timings.
set -u
OUT=${OUT:-/tmp}
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
G='memory floor|^decode, 1|^(2|4|8|16|32|64) tokens in|tau = 5|^plain|alone:'
bc() { echo "== PIPE=$1 '$2' (round $3)"; DSPARK_CUDA_ATT_PIPE=$1 timeout 40 $B/bench_cuda --ctx 512 --reps 5 --batch 0 $2 2>&1 | grep -E "$G"; }
bash scripts/gpu/check.sh 'DSPARK_CUDA_ATT_PIPE=0' 'DSPARK_CUDA_ATT_PIPE=2' 2>&1
for p in 0 1 2; do bc $p --one-stream 1; done
for p in 0 2; do DSPARK_CUDA_ATT_PIPE=$p DSPARK_REQUIRE_CUDA=1 DSPARK_TEST_ONLY=test_attention,test_forward,test_incremental_bitwise,test_spec_greedy $B/test_cuda > /tmp/t$p.log 2>&1; echo "test_cuda (some) PIPE=$p: rc $? $(tail -1 /tmp/t$p.log)"; done
for p in 2 1 0; do bc $p '' 1; done
for p in 2 1 0; do bc $p --one-stream 2; done
echo "== json one-stream default"; timeout 60 $B/bench_cuda --ctx 512 --reps 10 --batch 0 --one-stream --ablate --json $OUT/bench-cuda-one-stream.json 2>&1 | grep -E "^bench_cuda: NV|$G|^every op|^without attention|^products alone|^drafting"
