#!/usr/bin/env bash
# The README's default-model results: DSpark and DFlash (models/default) on the held-out split
# (code and prose prompts from the corpus, scripts/default_model/make_prompts.py) and on
# DeepSpec's code and chat prompt sets (bench/datasets: HumanEval, MT-Bench first turns, fed raw:
# the default target is a base LM without a chat template). Greedy, the same prompts and seeds
# for both drafters; each eval also runs plain decoding for the speedup (full block); then DSpark
# with the alg1 scheduler through `dspark generate --compare`.
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
DATA=(--data models/default/eval/heldout_code.jsonl --data models/default/eval/heldout_prose.jsonl
      --data bench/datasets/humaneval.jsonl --data bench/datasets/mt-bench.jsonl)
for a in dspark dflash; do
  "$BIN" eval --model $D/target --draft $D/$a "${DATA[@]}" --temp 0 --max-samples "$N" -n "$NEW" \
    --threads "${THREADS:-$(nproc)}" --json "$OUT/$a.json"
done
python3 scripts/default_model/compare.py "$OUT/dspark.json" "$OUT/dflash.json" > "$OUT/results.md.tmp"
# DSpark with the paper's scheduler (--policy alg1: calibrated confidences + this machine's SPS
# curve pick each round's verification length), every row of each set, against plain decoding
# in the same process (interleaved, median of three)
{ echo; echo "| dataset | prompts | DSpark + alg1: tau | speedup |"; echo "|---|---|---|---|"; } >> "$OUT/results.md.tmp"
for f in models/default/eval/heldout_code.jsonl models/default/eval/heldout_prose.jsonl bench/datasets/humaneval.jsonl bench/datasets/mt-bench.jsonl; do
  line=$("$BIN" generate --model $D/target --draft $D/dspark --policy alg1 --prompts "$f" -n "$NEW" --temp 0 --compare \
           --threads "${THREADS:-$(nproc)}" 2>&1 >/dev/null | tail -1)
  set -- $line  # "tau X  speedup Yx"
  echo "| $(basename "$f" .jsonl) | $(grep -c . "$f") | $2 | $4 |" >> "$OUT/results.md.tmp"
done
mv "$OUT/results.md.tmp" "$OUT/results.md"
cat "$OUT/results.md"
