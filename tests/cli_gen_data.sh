#!/bin/bash
# cli_gen_data.sh - `dspark gen-data` on the tiny-chat target: line format and loss mask (the
# assistant part after the header: empty think block, answer, <|im_end|> and "\n"); the output
# does not depend on --batch; an interrupted run (stopped early, a partial last line, or killed
# at a random moment) resumed with --resume equals an uninterrupted run byte for byte; an
# existing output without --resume and an out-of-order file are refused with one line.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; M="$DSPARK_TEST_DATA/tiny-chat"; T="$DSPARK_TEST_TMP/cli_gen_data"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
python3 - "$T" <<'PY'
import json, sys
words = "hello what is two plus four tell me a story about the sky and sea why are colors blue red green".split()
with open(f"{sys.argv[1]}/p.jsonl", "w") as f:
    for i in range(40):
        q = " ".join(words[(i * 7 + k) % len(words)] for k in range(1 + i % 6))
        row = {"turns": [q, "second turn ignored"]} if i % 3 == 0 else {"prompt": q} if i % 3 == 1 else \
              {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": "old"}]}
        f.write(json.dumps(row) + "\n")
PY
G="$B gen-data --model $M --prompts $T/p.jsonl -n 40 --threads 1"
$G --out "$T/a.jsonl" --batch 4 2>"$T/err"; rc=$?
check "gen-data runs" '[ $rc -eq 0 ] && [ $(wc -l < "$T/a.jsonl") -eq 40 ]'
python3 - "$T/a.jsonl" <<'PY'; rc=$?
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for k, r in enumerate(rows):
    assert set(r) == {"id", "input_ids", "loss_mask"} and r["id"] == k
    ids, m = r["input_ids"], r["loss_mask"]
    assert len(ids) == len(m) and set(m) <= {0, 1}
    s = m.index(1)
    assert not any(m[:s]) and all(m[s:]), "mask is one contiguous suffix"
    # tiny-chat ids: <|im_start|> 501, <|im_end|> 502, <think> 503, </think> 504, "\n" 10
    h = len(ids[:s]) - 1 - ids[:s][::-1].index(501)  # the last <|im_start|> before the mask
    assert ids[0] == 501 and ids[s - 1] == 10 and s - h <= 12 and ids[s] == 503, "mask starts after <|im_start|>assistant\\n"
    assert ids[s:s + 6] == [503, 10, 10, 504, 10, 10], "empty think block inside the mask"
    assert ids[-2:] == [502, 10], "ends with <|im_end|>\\n, masked"
    assert ids[:s].count(501) == 2, "no system prompt by default"
PY
check "line format and loss mask" '[ $rc -eq 0 ]'
$G --out "$T/b1.jsonl" --batch 1 2>/dev/null
check "output independent of --batch" 'cmp -s "$T/a.jsonl" "$T/b1.jsonl"'
# stopped early, then a partial last line (a write cut by a crash), then resume
$G --out "$T/r.jsonl" --batch 3 --limit 13 2>/dev/null
printf '{"id": 13, "input_ids": [501, 117' >> "$T/r.jsonl"
$G --out "$T/r.jsonl" --batch 5 --resume 2>"$T/err_r"; rc=$?
check "resume after a partial line equals an uninterrupted run" '[ $rc -eq 0 ] && cmp -s "$T/a.jsonl" "$T/r.jsonl"'
# killed at a random moment (whatever it had written), resumed
for delay in 0.02 0.05 0.1; do
  rm -f "$T/k.jsonl"
  $G --out "$T/k.jsonl" --batch 4 2>/dev/null & pid=$!
  sleep $delay; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  $G --out "$T/k.jsonl" --batch 4 --resume 2>/dev/null; rc=$?
  check "killed after ${delay}s and resumed equals an uninterrupted run" '[ $rc -eq 0 ] && cmp -s "$T/a.jsonl" "$T/k.jsonl"'
done
$G --out "$T/a.jsonl" 2>"$T/err2"; rc=$?
check "existing output without --resume is refused" '[ $rc -eq 2 ] && [ $(wc -l < "$T/err2") -eq 1 ] && grep -q -- "--resume" "$T/err2"'
sed -n '1p;3p' "$T/a.jsonl" > "$T/bad.jsonl"
$G --out "$T/bad.jsonl" --resume 2>"$T/err3"; rc=$?
check "out-of-order file refused" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err3") -eq 1 ] && grep -q "bad.jsonl" "$T/err3"'
$G --out "$T/s.jsonl" --limit 2 --system-prompt "You are a helpful assistant." 2>/dev/null
check "--system-prompt adds a system turn outside the mask" 'python3 -c "
import json,sys
r=json.loads(open(\"$T/s.jsonl\").readline()); ids=r[\"input_ids\"]; m=r[\"loss_mask\"]
assert ids[:m.index(1)].count(501)==3 and not any(m[:ids.index(501,1)+1])"'
exit $fail
