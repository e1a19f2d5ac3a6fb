#!/bin/bash
# cli_grad.sh - `dspark grad` on the tiny fixtures: the loss and every gradient tensor of one
# DeepSpec training step (fixed anchors from the fixture, DSpark loss settings) equal DeepSpec's
# (rel <= 1e-4, compared by the command's own --compare-* against the fixture files); the
# outputs have the promised shapes; bad arguments are one-line usage errors.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; D="$DSPARK_TEST_DATA/tiny-qwen3"; T="$DSPARK_TEST_TMP/cli_grad"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
# the fixture's sequence, loss mask (first 8 tokens masked), anchors and keep flags (README)
read -r IDS MASK ANCH KEEP < <(python3 - "$D" <<'PY'
import ast, struct, sys
def load(path):
    b = open(path, "rb").read()
    hl = struct.unpack("<H", b[8:10])[0]
    h = ast.literal_eval(b[10:10 + hl].decode())
    fmt = {"<i8": "q", "<f4": "f"}[h["descr"]]
    data = b[10 + hl:]
    return struct.unpack("<%d%s" % (len(data) // struct.calcsize(fmt), fmt), data)
d = sys.argv[1]
j = lambda xs: ",".join(str(int(x)) for x in xs)
print(j(load(d + "/target_ids.npy")), j(load(d + "/gated_loss_mask.npy")), j(load(d + "/gated_anchors.npy")), j(load(d + "/gated_anchor_keep.npy")))
PY
)
for h in gated dflash; do
  "$B" grad --model "$D/target" --draft "$D/draft-$h" --ids "$IDS" --loss-mask "$MASK" --anchors "$ANCH" --keep "$KEEP" \
    --out "$T/$h" --threads 1 --compare-loss "$D/${h}_loss.npy" --compare-grads "$D/${h}_grads.safetensors" >"$T/$h.log" 2>&1; rc=$?
  grep -E "^loss|worst" "$T/$h.log"
  check "$h: loss and gradients match DeepSpec" '[ $rc -eq 0 ]'
  check "$h: outputs written" '[ -s "$T/$h/loss.npy" ] && [ -s "$T/$h/grads.safetensors" ]'
done
# loss.npy is float32 [1]; grads.safetensors holds exactly the trainable tensors, F32
python3 - "$T/gated" "$D/gated_grads.safetensors" <<'PY'; rc=$?
import json, struct, sys
b = open(sys.argv[1] + "/loss.npy", "rb").read()
assert b"'descr': '<f4'" in b and b"'shape': (1,)" in b, b[:80]
def header(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return h
ours, ref = header(sys.argv[1] + "/grads.safetensors"), header(sys.argv[2])
assert set(ours) == set(ref), set(ours) ^ set(ref)
for k in ours:
    assert ours[k]["dtype"] == "F32" and ours[k]["shape"] == ref[k]["shape"], k
assert not any(k.startswith(("embed_tokens", "lm_head")) for k in ours)
PY
check "output formats and names" '[ $rc -eq 0 ]'
# a comparison that must fail: the gated drafter's gradients against the RNN's file
"$B" grad --model "$D/target" --draft "$D/draft-gated" --ids "$IDS" --loss-mask "$MASK" --anchors "$ANCH" --keep "$KEEP" \
  --out "$T/x" --threads 1 --compare-grads "$D/rnn_grads.safetensors" >/dev/null 2>"$T/err"; rc=$?
check "mismatched reference rejected" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err") -eq 1 ] && grep -q "gate_proj" "$T/err"'
"$B" grad --model "$D/target" --draft "$D/draft-gated" --ids "$IDS" --loss-mask "$MASK" --anchors "8,13,40" --out "$T/y" 2>"$T/err"; rc=$?
check "anchor past the sequence rejected" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err") -eq 1 ] && grep -q "anchor 2" "$T/err"'
"$B" grad --model "$D/target" --draft "$D/draft-gated" --ids "$IDS" --loss-mask "1,0" --anchors "8" --out "$T/y" 2>"$T/err"; rc=$?
check "loss mask length checked" '[ $rc -eq 2 ] && [ $(wc -l < "$T/err") -eq 1 ] && grep -q -- "--loss-mask" "$T/err"'
"$B" grad --help >/dev/null; check "--help" '[ $? -eq 0 ]'
exit $fail
