#!/usr/bin/env bash
# The README's default-model results: DSpark and DFlash (models/default) on the held-out split
# (code and prose prompts from the corpus, scripts/default_model/make_prompts.py) and on
# DeepSpec's code and chat prompt sets (bench/datasets: HumanEval, MT-Bench first turns, fed raw:
# the default target is a base LM without a chat template). Greedy, the same prompts and seeds
# for both drafters; each eval also runs plain decoding for the speedup.
#   scripts/default_model/results.sh [OUT_DIR] [MAX_SAMPLES] [MAX_NEW]
# writes OUT_DIR/{dspark,dflash}.json and OUT_DIR/results.md (compare.py's table).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/default-model}
N=${2:-64}
NEW=${3:-128}
BIN=${DSPARK_BIN:-build/dspark}
D=models/default
mkdir -p "$OUT"
SETS=(models/default/eval/heldout_code.jsonl models/default/eval/heldout_prose.jsonl
      bench/datasets/humaneval.jsonl bench/datasets/mt-bench.jsonl)
for a in dspark dflash; do
  "$BIN" eval --model $D/target --draft $D/$a --data "${SETS[@]}" --temp 0 --max-samples "$N" -n "$NEW" \
    --threads "${THREADS:-$(nproc)}" --json "$OUT/$a.json"
done
python3 scripts/default_model/compare.py "$OUT/dspark.json" "$OUT/dflash.json" > "$OUT/results.md.tmp"
mv "$OUT/results.md.tmp" "$OUT/results.md"
cat "$OUT/results.md"
