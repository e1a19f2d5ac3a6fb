#!/usr/bin/env bash
# The main job on the embedded default model (models/default); until that model ships, a short
# run on the tiny test model (random weights, so the ids are meaningless: it shows the engine
# runs end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/dspark
if [ -d models/default/target ] && [ -d models/default/dspark ]; then
  exec "$BIN" generate --model models/default/target --draft models/default/dspark \
    --prompt-file models/default/demo_prompts.txt --compare -n 128
fi
echo "demo: models/default is not shipped yet; running the tiny test model (random weights)"
"$BIN" generate --model tests/data/tiny-qwen3/target --prompt-ids 1,2,3,4,5,6,7,8 -n 16 --temp 0 --print-ids
