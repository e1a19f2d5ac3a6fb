#!/bin/bash
# cli_train.sh - `dspark train` on the tiny-chat target with data from `dspark gen-data`: the
# loss falls, the training tau and the held-out speculative tau (eval.csv) rise over a short run; metrics.csv / loss.svg / checkpoints
# in DeepSpec's format (our drafter loader reads model.safetensors); run 2N steps == run N,
# stop, resume N (byte-identical safetensors and metrics); a kill -9 at a random moment and
# --resume also ends byte-identical; a corrupt newest checkpoint is refused with one line and
# the previous one used; dflash trains a drafter without heads; bad settings are usage errors.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; M="$DSPARK_TEST_DATA/tiny-chat"; T="$DSPARK_TEST_TMP/cli_train"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
if "$B" train --help 2>&1 | grep -q "no drafter trainer"; then echo "SKIP: this build has no drafter trainer"; exit 0; fi
# sizes: 32 prompts -> 16 steps (checkpoints 5 10 15 16); under the sanitizers 16 -> 8 (5 8)
P=32; STOP=7; CSTOP=12; CPREV=10; KILL=1.2
if ldd "$B" 2>/dev/null | grep -q libasan; then P=16; STOP=3; CSTOP=7; CPREV=5; KILL=4; fi
S=$((P / 2))
python3 - "$T" $P <<'PY'
import json, sys
words = "hello what is two plus four tell me a story about the sky and sea why are colors blue red green".split()
with open(f"{sys.argv[1]}/p.jsonl", "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"turns": [" ".join(words[(i * 5 + k) % len(words)] for k in range(1 + i % 5))]}) + "\n")
PY
"$B" gen-data --model "$M" --prompts "$T/p.jsonl" --out "$T/data.jsonl" -n 40 --threads 1 2>/dev/null
check "gen-data made the data" '[ $(wc -l < "$T/data.jsonl") -eq $P ]'
# P samples, batch 4, 2 epochs -> S = P/2 steps; checkpoints every 5 and at the end
TR="$B train --model $M --data $T/data.jsonl --algo dspark --threads 1 --set global_batch_size=4 --set num_train_epochs=2 --set num_anchors=12 --set checkpointing_steps=5 --set lr=3e-3"
python3 - "$T" <<'PY'
import json, sys
words = "hello what is two plus four tell me a story about the sky and sea why are colors blue red green".split()
with open(f"{sys.argv[1]}/held.jsonl", "w") as f:  # same vocabulary, word sequences not in the training prompts
    for i in range(8):
        f.write(json.dumps({"turns": [" ".join(words[(i * 11 + 3 + k) % len(words)] for k in range(2 + i % 4))]}) + "\n")
PY
$TR --out "$T/full" --eval-prompts "$T/held.jsonl" --eval-samples 8 --eval-new 64 2>"$T/err_full"; rc=$?
check "train runs" '[ $rc -eq 0 ] && [ -f "$T/full/step_$S/model.safetensors" ] && [ "$(cat $T/full/latest)" = step_$S ]'
check "metrics.csv: header and a row per step" '[ "$(head -1 $T/full/metrics.csv)" = "step,lr,loss,ce,l1,conf,grad_norm,tau_probabilistic" ] && [ $(wc -l < "$T/full/metrics.csv") -eq $((S + 1)) ]'
check "loss.svg written" 'grep -q "<svg" "$T/full/loss.svg"'
python3 - "$T/full/eval.csv" $S <<'PY'; rc=$?
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]))); S = int(sys.argv[2])
assert [int(r["step"]) for r in rows] == [0] + list(range(5, S, 5)) + [S], rows
tau = [float(r["heldout_tau"]) for r in rows]
print(f"  held-out tau (T 1.0, 8 prompts x 64 tokens): {' '.join(f'{t:.3f}' for t in tau)}")
assert tau[-1] > (1.05 if S >= 16 else 1.0) * tau[0], "held-out tau rises over the run"
PY
check "held-out tau at step 0 and every checkpoint, rising" '[ $rc -eq 0 ]'
python3 - "$T/full/metrics.csv" <<'PY'; rc=$?
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
loss = [float(r["loss"]) for r in rows]; tau = [float(r["tau_probabilistic"]) for r in rows]
first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
print(f"  loss {first:.3f} -> {last:.3f}, tau {sum(tau[:3])/3:.3f} -> {sum(tau[-3:])/3:.3f}")
assert last < (0.85 if len(loss) >= 16 else 0.95) * first, "loss falls (by 15% over 16 steps)"
assert sum(tau[-3:]) > sum(tau[:3]), "training tau rises"
assert float(rows[0]["lr"]) > 0 and float(rows[-1]["lr"]) < float(rows[4]["lr"]), "warmup then decay"
PY
check "loss falls and tau rises" '[ $rc -eq 0 ]'
python3 - "$T/full/step_$S" <<'PY'; rc=$?
import json, struct, sys
d = sys.argv[1]
c = json.load(open(f"{d}/config.json"))
assert c["architectures"] == ["Qwen3DSparkModel"] and c["block_size"] == 7 and c["num_anchors"] == 12
assert c["markov_rank"] == 64 and c["markov_head_type"] == "vanilla" and c["enable_confidence_head"] and c["confidence_head_with_markov"]
f = open(f"{d}/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
assert h.pop("__metadata__") == {"format": "pt"}
assert {v["dtype"] for v in h.values()} == {"BF16"}
assert "embed_tokens.weight" in h and "lm_head.weight" in h and "markov_head.markov_w1.weight" in h and "confidence_head.proj.bias" in h
PY
check "checkpoint in DeepSpec's format" '[ $rc -eq 0 ]'
"$B" generate --model "$M" --draft "$T/full/step_$S" --prompt "hello" -n 8 --temp 0 --threads 1 >/dev/null 2>"$T/err_gen"; rc=$?
check "our drafter loader reads the checkpoint" '[ $rc -eq 0 ]'
# stop between checkpoints (the stop itself saves), resume to the end
$TR --out "$T/split" --stop-after $STOP 2>/dev/null
check "stopped run ends at step $STOP" '[ "$(cat $T/split/latest)" = step_$STOP ] && [ ! -d "$T/split/step_$S" ]'
$TR --out "$T/split" --resume 2>"$T/err_split"; rc=$?
check "resume says where it continued" '[ $rc -eq 0 ] && grep -q "resumed from step $STOP" "$T/err_split"'
same() { for f in model.safetensors master.safetensors exp_avg.safetensors exp_avg_sq.safetensors train_state.json config.json; do
           cmp -s "$1/step_$S/$f" "$2/step_$S/$f" || return 1; done; cmp -s "$1/metrics.csv" "$2/metrics.csv"; }
check "run $S == run $STOP, stop, resume (byte-identical checkpoint and metrics)" 'same "$T/full" "$T/split"'
# killed at a random moment, resumed
$TR --out "$T/kill" 2>/dev/null & pid=$!
sleep $KILL; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
$TR --out "$T/kill" --resume 2>/dev/null; rc=$?
check "kill -9 and resume == uninterrupted" '[ $rc -eq 0 ] && same "$T/full" "$T/kill"'
# corrupt the newest checkpoint of a stopped run: the previous one is used, with one warning line
$TR --out "$T/corrupt" --stop-after $CSTOP 2>/dev/null
printf 'x' | dd of="$T/corrupt/step_$CSTOP/master.safetensors" bs=1 seek=200 conv=notrunc 2>/dev/null
$TR --out "$T/corrupt" --resume 2>"$T/err_c"; rc=$?
check "corrupt checkpoint refused, previous used, same result" '[ $rc -eq 0 ] && grep -q "resumed from step $CPREV" "$T/err_c" && [ $(grep -c "checksum mismatch" "$T/err_c") -eq 1 ] && same "$T/full" "$T/corrupt"'
"$B" train --model "$M" --data "$T/data.jsonl" --algo dflash --threads 1 --out "$T/dflash" --set global_batch_size=8 --set max_train_steps=2 --set num_anchors=8 2>/dev/null; rc=$?
check "dflash: no heads" '[ $rc -eq 0 ] && python3 -c "import json; c=json.load(open(\"$T/dflash/step_2/config.json\")); assert c[\"markov_rank\"]==0 and not c[\"enable_confidence_head\"]"'
$TR --out "$T/bad" --set nope=1 2>"$T/err_bad"; rc=$?
check "unknown --set key is a usage error naming the key" '[ $rc -eq 2 ] && [ $(wc -l < "$T/err_bad") -eq 1 ] && grep -q nope "$T/err_bad"'
$TR --out "$T/split" --resume --set lr=1e-3 2>"$T/err_h"; rc=$?
check "resume with other settings refused" '[ $rc -eq 1 ] && grep -q "config hash" "$T/err_h"'
exit $fail
