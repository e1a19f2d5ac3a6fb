#!/usr/bin/env bash
# The main job: speculative decoding with the embedded default model (models/default: a small
# target with its DSpark drafter) on fixed held-out prompts, streaming text, then per-position
# acceptance, tokens/s and a final line "tau X  speedup Yx" (against the same binary without
# the drafter, same threads, interleaved, median of three).
# Until models/default ships, the same run on the tiny test model (random weights: the text is
# noise and the drafter accepts little; it shows the engine end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/dspark
if [ -d models/default/target ] && [ -d models/default/dspark ]; then
  while IFS= read -r prompt; do
    echo "### $prompt"
    "$BIN" generate --model models/default/target --draft models/default/dspark --prompt "$prompt" -n 128 --temp 0 --compare
  done < models/default/demo_prompts.txt
  exit 0
fi
echo "demo: models/default is not shipped yet; running the tiny test model (random weights)"
"$BIN" generate --model tests/data/tiny-chat --draft tests/data/tiny-qwen3/draft-vanilla --prompt "def fibonacci(n):" \
  -n 64 --temp 0 --compare
