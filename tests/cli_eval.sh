#!/bin/bash
# cli_eval.sh - `dspark eval`: JSON report shape (config + one object per dataset with exactly
# the issue's keys plus tau's 95% CI and per-sample sums, "tau" once per dataset and nowhere else), capping with --max-samples,
# text-only rows rejected with a one-line error, missing flags are usage errors, --multi-turn.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; D="$DSPARK_TEST_DATA/tiny-qwen3"; T="$DSPARK_TEST_TMP/cli_eval"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
python3 - "$T" <<'PY'
import json, random, sys
r = random.Random(3)
for name, n in (("gsm8k", 9), ("custom", 3)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"turns": ["q"], "prompt_ids": [r.randrange(500) for _ in range(r.randrange(2, 12))]}) + "\n\n")
with open(f"{sys.argv[1]}/text.jsonl", "w") as f:
    f.write(json.dumps({"turns": ["hello"]}) + "\n")
PY
"$B" eval --model "$D/target" --draft "$D/draft-gated" --data "$T/gsm8k.jsonl" --data "$T/custom.jsonl" --max-samples 4 -n 12 \
  --json "$T/r.json" --threads 1 2>"$T/err"; rc=$?
check "eval runs" '[ $rc -eq 0 ]'
python3 - "$T/r.json" <<'PY'; rc=$?
import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text)
assert set(r) == {"config", "datasets"}, r.keys()
keys = {"name", "samples", "rounds", "tau", "tau_ci95", "sample_tau_sum", "sample_rounds", "proposal_len", "accept_rate_at", "cond_accept",
        "tokens_per_s", "plain_tokens_per_s", "speedup"}
assert [d["name"] for d in r["datasets"]] == ["gsm8k", "custom"]
for d in r["datasets"]:
    assert set(d) == keys, set(d) ^ keys
    assert len(d["accept_rate_at"]) == 4 and len(d["cond_accept"]) == 4
    assert d["tau"] >= 1 and d["rounds"] > 0
    # per-sample sums add up to the totals; the 95% CI holds tau
    assert sum(d["sample_rounds"]) == d["rounds"] and len(d["sample_rounds"]) == d["samples"]
    assert abs(sum(d["sample_tau_sum"]) / d["rounds"] - d["tau"]) < 1e-12
    lo, hi = d["tau_ci95"]
    assert lo <= d["tau"] <= hi, d["tau_ci95"]
assert r["datasets"][0]["samples"] == 4 and r["datasets"][1]["samples"] == 3
assert text.count('"tau"') == 2
assert r["config"]["seed"] == 980406
PY
check "JSON shape" '[ $rc -eq 0 ]'
"$B" eval --model "$D/target" --draft "$D/draft-gated" --data "$T/text.jsonl" 2>"$T/err2"; rc=$?
check "text rows need a tokenizer" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err2") -eq 1 ] && grep -q "text.jsonl:1" "$T/err2"'
# text turns through the chat template: tiny-chat has a tokenizer and the same shapes as the fixture target
python3 -c "
import json
with open('$T/mt-bench.jsonl', 'w') as f:
    for q in ['What is two plus two?', 'Name a colour.', 'Say hi.']:
        f.write(json.dumps({'turns': [q, 'second turn, ignored']}) + '\\n')
"
"$B" eval --model "$DSPARK_TEST_DATA/tiny-chat" --draft "$D/draft-rnn" --data "$T/mt-bench.jsonl" -n 8 --json "$T/c.json" --threads 1 2>"$T/err3"; rc=$?
check "eval with text turns" '[ $rc -eq 0 ]'
python3 -c "
import json
r = json.load(open('$T/c.json'))
assert 'chat template' in r['config']['prompts'], r['config']['prompts']
assert r['datasets'][0]['name'] == 'mt-bench' and r['datasets'][0]['samples'] == 3
"; rc=$?
check "chat template used, all 3 rows (mt-bench cap 80)" '[ $rc -eq 0 ]'
# --multi-turn: the second turn is answered after the model's first answer (more rounds than
# first-turn-only, same greedy first turns); it needs a chat template (one-line error without)
"$B" eval --model "$DSPARK_TEST_DATA/tiny-chat" --draft "$DSPARK_TEST_DATA/trained-draft" --data "$T/mt-bench.jsonl" -n 8 --temp 0 \
  --no-plain --json "$T/s1.json" --threads 1 2>/dev/null; rc1=$?
"$B" eval --model "$DSPARK_TEST_DATA/tiny-chat" --draft "$DSPARK_TEST_DATA/trained-draft" --data "$T/mt-bench.jsonl" -n 8 --temp 0 \
  --no-plain --multi-turn --json "$T/m2.json" --threads 1 2>/dev/null; rc2=$?
check "multi-turn runs" '[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]'
python3 -c "
import json
s, m = json.load(open('$T/s1.json')), json.load(open('$T/m2.json'))
assert m['config']['multi_turn'] is True and s['config']['multi_turn'] is False
assert m['datasets'][0]['rounds'] > s['datasets'][0]['rounds'], (m['datasets'][0]['rounds'], s['datasets'][0]['rounds'])
"; rc=$?
check "multi-turn answers every turn" '[ $rc -eq 0 ]'
"$B" eval --model "$D/target" --draft "$D/draft-gated" --data "$T/custom.jsonl" --multi-turn 2>"$T/err4"; rc=$?
check "multi-turn without a chat template: one-line error" '[ $rc -eq 1 ] && [ $(wc -l < "$T/err4") -eq 1 ] && grep -q "chat template" "$T/err4"'
"$B" eval --model "$D/target" --data "$T/custom.jsonl" >/dev/null 2>&1; rc=$?
check "missing --draft" '[ $rc -eq 2 ]'
"$B" eval --model "$D/target" --draft "$D/draft-vanilla" --data "$T/custom.jsonl" -n 16 --no-plain --threads 1 \
  --record "$T/rec.jsonl" >/dev/null 2>&1; rc=$?
python3 -c "
import json
rows = [json.loads(l) for l in open('$T/rec.jsonl')]
assert rows and all(len(r['z']) == len(r['y']) > 0 for r in rows)
assert all(r['y'] == sorted(r['y'], reverse=True) for r in rows)  # y is a prefix indicator
"; rc2=$?
check "--record writes one {z, y} line per round" '[ $rc -eq 0 ] && [ $rc2 -eq 0 ]'
exit $fail
