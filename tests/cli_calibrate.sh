#!/bin/bash
# cli_calibrate.sh - `dspark calibrate` end to end on the tiny chat target (tests/data/tiny-chat:
# the fixture target with a tokenizer, which tests/data/trained-draft was trained for; the
# drafter has a confidence head): calibration.json has exactly the contract's keys and shapes
# (block 7, temperatures on the grid or 1, positions_with_data = the rounds verified through
# each position), it replaces an existing file by rename (new inode, no .tmp left), position 0
# is no worse after the fit, a reliability SVG per position, the --json report's bins add up,
# the same seed gives the same temperatures, `dspark eval --record` + `calibrate --records` fits
# exactly what decoding here recorded; --help; a bad flag, a missing data file, a bad row
# and a drafter without a confidence head are one-line errors that leave the old file alone.
# ctest: labels=cli
set -u
B="$DSPARK_BIN"; D="$DSPARK_TEST_DATA"; T="$DSPARK_TEST_TMP/cli_calibrate"; rm -rf "$T"; mkdir -p "$T"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok   $1"; fi; }
python3 - "$T" <<'PY'
import json, random, sys
r = random.Random(7)
words = "the cat dog runs big small red blue sky sea tree house eat play".split()
with open(f"{sys.argv[1]}/cal.jsonl", "w") as f:
    for i in range(5):
        f.write(json.dumps({"turns": [" ".join(r.choice(words) for _ in range(6)), "ignored"]}) + "\n\n")
with open(f"{sys.argv[1]}/p.jsonl", "w") as f:
    f.write(json.dumps({"prompt": "the sky is blue"}) + "\n")
with open(f"{sys.argv[1]}/ids.jsonl", "w") as f:
    f.write(json.dumps({"prompt_ids": [r.randrange(200) for _ in range(8)]}) + "\n")
with open(f"{sys.argv[1]}/bad.jsonl", "w") as f:
    f.write(json.dumps({"turns": ["fine"]}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
PY
run() { "$B" calibrate --model "$D/tiny-chat" --draft "$D/trained-draft" --threads 1 -n 24 "$@"; }
echo '{"old": true}' > "$T/calibration.json"
ino0=$(stat -c %i "$T/calibration.json")
run --data "$T/cal.jsonl" --data "$T/p.jsonl" --data "$T/ids.jsonl" --out "$T/calibration.json" --json "$T/report.json" 2>"$T/err"; rc=$?
check "calibrate runs" '[ $rc -eq 0 ]'
check "table on stderr" 'grep -q "ECE before" "$T/err" && [ $(grep -c "^[0-6] " "$T/err") -eq 7 ]'
check "progress bar with ETA" 'grep -q "ETA" "$T/err"'
check "replaced by rename: new inode, no .tmp left" '[ "$(stat -c %i "$T/calibration.json")" != "$ino0" ] && ! ls "$T" | grep -q tmp'
python3 - "$T" <<'PY'; rc=$?
import json, math, sys, xml.etree.ElementTree as ET
t = sys.argv[1]
c = json.load(open(f"{t}/calibration.json"))
need = {"format", "version", "block_size", "temperatures", "rounds", "ece_before", "ece_after", "auc_before", "auc_after",
        "positions_with_data"}
assert need <= set(c), need - set(c)
assert c["format"] == "dspark-calibration" and c["version"] == 1 and c["block_size"] == 7, c
for k in need - {"format", "version", "block_size", "rounds"}:
    assert isinstance(c[k], list) and len(c[k]) == 7, k
grid = [0.25 * 16 ** (k / 63) for k in range(64)] + [1.0]
assert all(any(abs(x - g) < 1e-6 for g in grid) for x in c["temperatures"]), c["temperatures"]
n = c["positions_with_data"]
assert c["rounds"] > 0 and n[0] == c["rounds"] and all(a >= b for a, b in zip(n, n[1:])), (c["rounds"], n)
assert c["ece_after"][0] <= c["ece_before"][0] + 1e-12, (c["ece_before"][0], c["ece_after"][0])
for k in ("ece_before", "ece_after"):
    assert all(v is None or 0 <= v <= 1 for v in c[k]), k
for k in ("auc_before", "auc_after"):
    assert all(v is None or 0 <= v <= 1 for v in c[k]), k
r = json.load(open(f"{t}/report.json"))
assert r["calibration"]["temperatures"] == c["temperatures"] and r["config"]["prompts"] == 7, r["config"]
assert len(r["reliability"]) == 7
for j, p in enumerate(r["reliability"]):
    assert p["position"] == j and p["count"] == n[j]
    for side in ("before", "after"):
        assert sum(b["count"] for b in p[side]) == n[j]
        assert all(0 <= b["bin"] < 20 for b in p[side])
    if n[j]:
        ET.parse(f"{t}/calibration-reliability-pos{j}.svg")
PY
check "calibration.json shape, report, reliability SVGs" '[ $rc -eq 0 ]'
run --data "$T/cal.jsonl" --data "$T/p.jsonl" --data "$T/ids.jsonl" --out "$T/again.json" --plot "$T/p2" 2>/dev/null; rc=$?
check "same seed, same temperatures; --plot PREFIX" '[ $rc -eq 0 ] && [ -f "$T/p2-pos0.svg" ] && python3 -c "
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
assert a[\"temperatures\"] == b[\"temperatures\"] and a[\"rounds\"] == b[\"rounds\"]" "$T/calibration.json" "$T/again.json"'
# independent recorder: eval --record (full proposals) then calibrate --records fits the same rounds
run --data "$T/cal.jsonl" --out "$T/dec.json" 2>/dev/null; rc=$?
"$B" eval --model "$D/tiny-chat" --draft "$D/trained-draft" --threads 1 -n 24 --data "$T/cal.jsonl" --no-plain \
  --record "$T/rec.jsonl" 2>/dev/null; rc2=$?
"$B" calibrate --draft "$D/trained-draft" --records "$T/rec.jsonl" --out "$T/fromrec.json" 2>/dev/null; rc3=$?
check "eval --record + calibrate --records = calibrate decoding" '[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ $rc3 -eq 0 ] && python3 -c "
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
for k in (\"temperatures\", \"rounds\", \"positions_with_data\", \"ece_before\", \"ece_after\", \"auc_after\"):
    assert a[k] == b[k], (k, a[k], b[k])" "$T/dec.json" "$T/fromrec.json"'
printf '{"z": [1.5, 0.2], "y": [0, 1]}\n' > "$T/badrec.jsonl"
"$B" calibrate --draft "$D/trained-draft" --records "$T/badrec.jsonl" --out "$T/x.json" 2>"$T/e6"; rc=$?
check "records: y not a prefix indicator is one line naming file:line" '[ $rc -eq 1 ] && [ $(wc -l < "$T/e6") -eq 1 ] && grep -q "badrec.jsonl:1" "$T/e6"'
printf '{"z": [1.5, 0.2], "y": [1, 0]}\n' > "$T/shortrec.jsonl"
"$B" calibrate --draft "$D/trained-draft" --records "$T/shortrec.jsonl" --out "$T/x.json" 2>"$T/e8"; rc=$?
check "records of a smaller block: one line" '[ $rc -eq 1 ] && [ $(wc -l < "$T/e8") -eq 1 ] && grep -q "longest 2" "$T/e8"'
"$B" calibrate --draft "$D/trained-draft" --records "$T/rec.jsonl" --data "$T/cal.jsonl" --out "$T/x.json" 2>"$T/e7"; rc=$?
check "--records with --data: usage error" '[ $rc -eq 2 ] && [ $(wc -l < "$T/e7") -eq 1 ]'
run --data "$T/ids.jsonl" --out "$T/plotfail.json" --plot "$T/no/such/dir/p" 2>"$T/e9"; rc=$?
check "unwritable --plot: one line, calibration.json still written" '[ $rc -eq 1 ] && [ $(grep -c "dspark calibrate:" "$T/e9") -eq 1 ] && grep -q "plotfail.json was written" "$T/e9" && [ -f "$T/plotfail.json" ]'
cp "$T/calibration.json" "$T/keep.json"
"$B" calibrate --help >"$T/help" 2>&1; rc=$?
check "--help" '[ $rc -eq 0 ] && grep -q -- "--out" "$T/help" && grep -q -- "--plot" "$T/help"'
run --data "$T/cal.jsonl" --out "$T/calibration.json" --bogus 2>"$T/e1"; rc=$?
check "bad flag: one line, exit 2" '[ $rc -eq 2 ] && [ $(wc -l < "$T/e1") -eq 1 ] && grep -q -- "--bogus" "$T/e1"'
run --data "$T/cal.jsonl" 2>"$T/e2"; rc=$?
check "missing --out: one line, exit 2" '[ $rc -eq 2 ] && [ $(wc -l < "$T/e2") -eq 1 ]'
run --data "$T/nope.jsonl" --out "$T/calibration.json" 2>"$T/e3"; rc=$?
check "missing data file: one line naming it" '[ $rc -eq 1 ] && [ $(wc -l < "$T/e3") -eq 1 ] && grep -q "nope.jsonl" "$T/e3"'
run --data "$T/bad.jsonl" --out "$T/calibration.json" 2>"$T/e4"; rc=$?
check "bad row: one line naming file:line" '[ $rc -eq 1 ] && [ $(wc -l < "$T/e4") -eq 1 ] && grep -q "bad.jsonl:2" "$T/e4"'
"$B" calibrate --model "$D/tiny-qwen3/target" --draft "$D/tiny-qwen3/draft-dflash" --data "$T/ids.jsonl" \
  --out "$T/calibration.json" 2>"$T/e5"; rc=$?
check "no confidence head: one line" '[ $rc -eq 1 ] && [ $(wc -l < "$T/e5") -eq 1 ] && grep -q "confidence head" "$T/e5"'
check "failed runs left calibration.json alone" 'cmp -s "$T/calibration.json" "$T/keep.json"'
exit $fail
