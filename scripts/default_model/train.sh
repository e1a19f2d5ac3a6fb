#!/usr/bin/env bash
# Reproduces the embedded default model (models/default) from Debian text, stage by stage;
# every stage resumes (re-run the script after an interruption). WORK holds the corpus,
# checkpoints and logs (default /work/default); nothing is downloaded.
#   scripts/default_model/train.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/work/default}
BIN=${DSPARK_BIN:-build/dspark}
# threads sleep instead of spinning at barriers: this job shares the machine (measured 2x faster
# under contention on 2 cores)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$WORK"
# 1. corpus: Python stdlib, C headers, /usr/share/doc prose (held-out split by path hash)
[ -f "$WORK/corpus/train.txt" ] || scripts/make_corpus.sh "$WORK/corpus"
# 2. tokenizer: byte-level BPE, 2048 ids (2043 + 5 Qwen3 special tokens)
[ -f "$WORK/tokenizer/tokenizer.json" ] || "$BIN" train-tokenizer --data "$WORK/corpus/train.txt" --vocab-size 2048 --out "$WORK/tokenizer"
# 3. target: 6-layer Qwen3, hidden 192 (about 3M parameters)
"$BIN" pretrain --config scripts/default_model/target_config.json --tokenizer "$WORK/tokenizer" \
  --data "$WORK/corpus/train.txt" --heldout "$WORK/corpus/heldout.txt" --out "$WORK/target" \
  --steps 1200 --batch 32 --micro-batch 8 --seq 256 --lr 2e-3 --warmup-ratio 0.02 --save-every 50 --seed 1234 --resume
