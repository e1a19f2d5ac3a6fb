#!/usr/bin/env bash
# Reproduces the embedded default model (models/default) from Debian text, stage by stage;
# every stage resumes (re-run the script after an interruption). WORK holds the corpus,
# checkpoints and logs (default /work/default); nothing is downloaded.
#   scripts/default_model/train.sh [WORK] [STAGE...]   (stages: corpus tokenizer target prompts
#                                                       data dspark dflash calibrate export;
#                                                       default all)
# PRETRAIN_STEPS, DATA_LIMIT and EPOCHS shrink the run for a smoke test.
# THREADS (default: all cores) sets every stage's thread count; the two drafters train one
# after the other unless PARALLEL=1 (then each gets half of the threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/work/default}
shift || true
STAGES=${*:-corpus tokenizer target prompts data dspark dflash calibrate export}
BIN=${DSPARK_BIN:-build/dspark}
THREADS=${THREADS:-$(nproc)}
# threads sleep instead of spinning at barriers: this job may share the machine (measured 2x
# faster under contention on 2 cores)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$WORK"
has() { [[ " $STAGES " == *" $1 "* ]]; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# 1. corpus: Python stdlib, C headers, /usr/share/doc prose (held-out split by path hash)
if has corpus && [ ! -f "$WORK/corpus/train.txt" ]; then log corpus; scripts/make_corpus.sh "$WORK/corpus"; fi

# 2. tokenizer: byte-level BPE, 2048 ids (2043 + 5 Qwen3 special tokens). The target is a base
#    LM trained on raw text, so its tokenizer_config.json carries no chat template: prompts are
#    fed raw everywhere (gen-data, eval, the demo), which is what such a model has seen.
if has tokenizer && [ ! -f "$WORK/tokenizer/tokenizer.json" ]; then
  log tokenizer
  "$BIN" train-tokenizer --data "$WORK/corpus/train.txt" --vocab-size 2048 --out "$WORK/tokenizer.tmp"
  python3 - "$WORK/tokenizer.tmp/tokenizer_config.json" <<'EOF'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c.pop("chat_template", None)
json.dump(c, open(p, "w"), indent=2, ensure_ascii=False)
EOF
  rm -rf "$WORK/tokenizer" && mv "$WORK/tokenizer.tmp" "$WORK/tokenizer"
fi

# 3. target: 6-layer Qwen3, hidden 192 (about 3M parameters), 1200 steps of 32 x 256 tokens
if has target; then
  log target
  "$BIN" pretrain --config scripts/default_model/target_config.json --tokenizer "$WORK/tokenizer" \
    --data "$WORK/corpus/train.txt" --heldout "$WORK/corpus/heldout.txt" --out "$WORK/target" \
    --steps "${PRETRAIN_STEPS:-1200}" --batch 32 --micro-batch 8 --seq 256 --lr 2e-3 --warmup-ratio 0.02 --save-every 50 --seed 1234 \
    --threads "$THREADS" --resume
fi
T="$WORK/target/model"

# 4. prompts from the corpus (train split for the drafters' data, held-out split for eval)
if has prompts && [ ! -f "$WORK/prompts/heldout_prose.jsonl" ]; then
  log prompts; python3 scripts/default_model/make_prompts.py "$WORK/corpus" "$WORK/prompts"
fi

# 5. the target's own answers (continuations) to the training prompts, its recommended sampling
if has data; then
  log data
  "$BIN" gen-data --model "$T" --prompts "$WORK/prompts/train_prompts.jsonl" --out "$WORK/data.jsonl" \
    -n 192 --batch 32 --seed 7 --threads "$THREADS" ${DATA_LIMIT:+--limit "$DATA_LIMIT"} --resume
fi

# 6. the drafters: same backbone (1 draft layer), block 7, data, steps, lr and seed; DSpark adds
#    the Markov head (rank 64) and the confidence head, with DeepSpec's DSpark loss weights
COMMON=(--set num_draft_layers=1 --set block_size=7 --set global_batch_size=32 --set num_train_epochs="${EPOCHS:-8}"
        --set num_anchors=64 --set lr=3e-3 --set seed=42 --set checkpointing_steps=200
        --eval-prompts "$WORK/prompts/heldout_code.jsonl" --eval-samples 16 --eval-new 64)
train_drafter() { # algo threads
  local extra=()
  [ "$1" = dspark ] && extra=(--set markov_rank=64)
  "$BIN" train --model "$T" --data "$WORK/data.jsonl" --algo "$1" --out "$WORK/$1" "${COMMON[@]}" "${extra[@]}" \
    --threads "$2" --resume
}
if [ "${PARALLEL:-0}" = 1 ] && has dspark && has dflash; then
  log "dspark + dflash (parallel)"
  half=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))
  train_drafter dspark "$half" > "$WORK/dspark.log" 2>&1 & p1=$!
  train_drafter dflash "$half" > "$WORK/dflash.log" 2>&1 & p2=$!
  wait $p1; wait $p2
else
  if has dspark; then log dspark; train_drafter dspark "$THREADS"; fi
  if has dflash; then log dflash; train_drafter dflash "$THREADS"; fi
fi

latest() { ls -d "$1"/step_* 2>/dev/null | sort -t_ -k2 -n | tail -1; }
# 7. Sequential Temperature Scaling of DSpark's confidence head for greedy decoding (the demo's),
#    on the last 192 training prompts (disjoint from the held-out evaluation prompts)
if has calibrate && [ ! -f "$WORK/calib/calibration.json" ]; then
  log calibrate
  tail -192 "$WORK/prompts/train_prompts.jsonl" > "$WORK/prompts/calib_prompts.jsonl"
  mkdir -p "$WORK/calib"
  "$BIN" calibrate --model "$T" --draft "$(latest "$WORK/dspark")" --data "$WORK/prompts/calib_prompts.jsonl" --temp 0 -n 128 \
    --out "$WORK/calib/calibration.json" --plot "$WORK/calib/rel" --threads "$THREADS"
fi

# 8. export: the newest checkpoints become models/default/{target,dspark,dflash}
if has export; then
  log export
  mkdir -p models/default
  rm -rf models/default/target.tmp && cp -r "$T" models/default/target.tmp
  rm -rf models/default/target && mv models/default/target.tmp models/default/target
  for a in dspark dflash; do
    src=$(latest "$WORK/$a"); [ -n "$src" ] || { echo "no $a checkpoint in $WORK/$a" >&2; exit 1; }
    rm -rf "models/default/$a.tmp" && mkdir -p "models/default/$a.tmp"
    cp "$src/config.json" "$src/model.safetensors" "models/default/$a.tmp/"
    [ $a = dspark ] && [ -f "$WORK/calib/calibration.json" ] && cp "$WORK/calib/calibration.json" "models/default/$a.tmp/"
    rm -rf "models/default/$a" && mv "models/default/$a.tmp" "models/default/$a"
  done
  # the held-out prompts (README results, scripts/default_model/results.sh) and the demo's:
  # the first 16 held-out code prompts
  mkdir -p models/default/eval
  cp "$WORK/prompts/heldout_code.jsonl" "$WORK/prompts/heldout_prose.jsonl" models/default/eval/
  head -16 "$WORK/prompts/heldout_code.jsonl" > models/default/demo_prompts.jsonl.tmp
  mv models/default/demo_prompts.jsonl.tmp models/default/demo_prompts.jsonl
fi
log done
