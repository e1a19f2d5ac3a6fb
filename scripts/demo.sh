#!/usr/bin/env bash
# The main job: speculative decoding with the embedded default model (models/default: a small
# target trained by dspark on Debian's own text, with its DSpark drafter) on fixed held-out
# code prompts. Streams each continuation, then per-position acceptance, tokens/s and a final line
# "tau X  speedup Yx" (against the same binary without the drafter, same threads, runs
# interleaved, median of three).
# Without models/default (a checkout that dropped it), the same run on the tiny test model
# (random weights: the text is noise and the drafter accepts little).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/dspark
D=models/default
if [ -d $D/target ] && [ -d $D/dspark ]; then
  # --policy alg1: the paper's scheduler picks each round's verification length from the
  # calibrated confidences and this machine's step-time curve (measured once, then cached in
  # ~/.cache/dspark)
  echo "demo: greedy continuations of $(grep -c . $D/demo_prompts.jsonl) held-out code prompts by $D/target," \
       "drafted by $D/dspark, then the same without the drafter"
  exec "$BIN" generate --model $D/target --draft $D/dspark --policy alg1 --prompts $D/demo_prompts.jsonl -n 160 --temp 0 --compare
fi
echo "demo: models/default is not shipped; running the tiny test model (random weights)"
"$BIN" generate --model tests/data/tiny-chat --draft tests/data/tiny-qwen3/draft-vanilla --prompt "def fibonacci(n):" \
  -n 64 --temp 0 --compare
