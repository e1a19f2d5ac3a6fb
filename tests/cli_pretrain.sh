#!/bin/bash
# cli_pretrain.sh - making a small target from text: train-tokenizer, then pretrain; the
# held-out loss falls; the result is a model directory that dspark generates with; a run
# stopped and resumed ends byte-identical to an uninterrupted one; bad input is one line.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; T="$DSPARK_TEST_TMP/cli_pretrain"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
python3 - "$T" <<'PY'
import random, sys
random.seed(3)
nouns = "cat dog bird fish tree river stone cloud house road".split()
verbs = "sees likes finds follows keeps moves".split()
def text(n):
    out = []
    for _ in range(n):
        out.append(f"the {random.choice(nouns)} {random.choice(verbs)} the {random.choice(nouns)}.")
        if random.random() < 0.2: out.append("\n")
    return " ".join(out)
open(f"{sys.argv[1]}/train.txt", "w").write(text(1500))
open(f"{sys.argv[1]}/held.txt", "w").write(text(200))
PY
"$B" train-tokenizer --data "$T/train.txt" --vocab-size 320 --out "$T/tok" 2>/dev/null
check "train-tokenizer" '[ -f "$T/tok/tokenizer.json" ] && [ -f "$T/tok/tokenizer_config.json" ]'
cat > "$T/cfg.json" <<'J'
{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
 "max_position_embeddings": 128, "tie_word_embeddings": true}
J
PT="$B pretrain --config $T/cfg.json --tokenizer $T/tok --data $T/train.txt --heldout $T/held.txt --steps 12 --batch 4 --seq 32 --lr 1e-2 --save-every 4 --eval-windows 8 --threads 1"
$PT --out "$T/full" 2>"$T/err_full"; rc=$?
check "pretrain runs" '[ $rc -eq 0 ] && [ -f "$T/full/model/model.safetensors" ] && [ -f "$T/full/model/tokenizer.json" ] && [ "$(cat $T/full/ckpt/latest)" = step_12 ]'
check "metrics.csv: a row per step, held-out loss at checkpoints" '[ $(wc -l < "$T/full/metrics.csv") -eq 13 ] && [ $(cut -d, -f6 "$T/full/metrics.csv" | grep -c "[0-9]") -eq 3 ]'
python3 - "$T/full/metrics.csv" <<'PY'; rc=$?
import csv, sys
h = [float(r["heldout_loss"]) for r in csv.DictReader(open(sys.argv[1])) if r["heldout_loss"]]
print(f"  held-out loss at steps 4, 8, 12: {' '.join(f'{x:.3f}' for x in h)}")
assert h[-1] < 0.8 * h[0]
PY
check "held-out loss falls" '[ $rc -eq 0 ]'
check "loss plot" 'grep -q "<svg" "$T/full/loss.svg"'
out=$("$B" generate --model "$T/full/model" --prompt "the cat" -n 12 --temp 0 2>/dev/null); rc=$?
echo "  sample: the cat$out"
check "the model generates" '[ $rc -eq 0 ] && [ -n "$out" ]'
$PT --out "$T/split" --stop-after 6 2>/dev/null
$PT --out "$T/split" --resume 2>/dev/null; rc=$?
check "stop at 6, resume == uninterrupted (byte-identical weights and moments)" '[ $rc -eq 0 ] && cmp -s "$T/full/model/model.safetensors" "$T/split/model/model.safetensors" && cmp -s "$T/full/ckpt/step_12/master.safetensors" "$T/split/ckpt/step_12/master.safetensors" && cmp -s "$T/full/ckpt/step_12/exp_avg_sq.safetensors" "$T/split/ckpt/step_12/exp_avg_sq.safetensors"'
check "resumed metrics keep every step once" '[ $(wc -l < "$T/split/metrics.csv") -eq 13 ]'
printf '{"hidden_size": 32,' > "$T/bad.json"
"$B" pretrain --config "$T/bad.json" --tokenizer "$T/tok" --data "$T/train.txt" --out "$T/bad" 2>"$T/err_bad"; rc=$?
check "malformed config: one line naming the file" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err_bad") -eq 1 ] && grep -q bad.json "$T/err_bad"'
"$B" pretrain --config "$T/cfg.json" --out "$T/x" 2>"$T/err_use"; rc=$?
check "missing flags: usage error" '[ $rc -eq 2 ]'
exit $fail
