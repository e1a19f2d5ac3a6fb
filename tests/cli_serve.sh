#!/usr/bin/env bash
# `dspark serve` end to end with the official openai npm client (tests/server/client.mjs):
# greedy outputs equal `dspark generate`, streaming, errors, disconnects, SIGTERM drain.
# ctest: labels=cli;server
set -euo pipefail
BIN=${DSPARK_BIN:?}; DATA=${DSPARK_TEST_DATA:?}; TMP=${DSPARK_TEST_TMP:-/tmp}/serve.$$
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$TMP"
if [ ! -d "$HERE/server/node_modules/openai" ]; then
  echo "tests/server/node_modules missing: run scripts/install-deps.sh (it runs npm ci there)"; exit 1
fi
MODEL=$DATA/tiny-chat
PROMPT="Hello there, how are you?"
N=12
"$BIN" generate --model "$MODEL" --prompt "$PROMPT" -n $N --temp 0 > "$TMP/completion.txt" 2>/dev/null
"$BIN" generate --model "$MODEL" --chat "$PROMPT" -n $N --temp 0 > "$TMP/chat.txt" 2>/dev/null
node -e 'const fs=require("fs"); const [p,n,c,h]=process.argv.slice(1);
  console.log(JSON.stringify({prompt:p,n:+n,completion:fs.readFileSync(c,"utf8"),chat:fs.readFileSync(h,"utf8")}))' \
  "$PROMPT" "$N" "$TMP/completion.txt" "$TMP/chat.txt" > "$TMP/expect.json"
PORT=$(( 20000 + $$ % 20000 ))
"$BIN" serve --model "$MODEL" --port $PORT --slots 4 --batch-tokens 64 --ctx 512 2> "$TMP/server.log" &
PID=$!
trap 'kill -9 $PID ${PID2:-} 2>/dev/null || true' EXIT
for i in $(seq 1 100); do
  if node -e "fetch('http://127.0.0.1:$PORT/health').then(r=>process.exit(r.status==200?0:1)).catch(()=>process.exit(1))"; then break; fi
  sleep 0.1
done
rc=0
node "$HERE/server/client.mjs" "http://127.0.0.1:$PORT" "$TMP/expect.json" || rc=1
kill -TERM $PID
for i in $(seq 1 100); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
if kill -0 $PID 2>/dev/null; then echo "FAIL server did not exit after SIGTERM"; kill -9 $PID; rc=1; fi
wait $PID || { echo "FAIL server exit status $?"; cat "$TMP/server.log"; rc=1; }
grep -q "stopped" "$TMP/server.log" || { echo "FAIL no clean shutdown"; cat "$TMP/server.log"; rc=1; }
# the same greedy completion through a speculative server (DSpark drafter, fixed:2 policy)
PORT2=$((PORT + 1))
"$BIN" serve --model "$MODEL" --draft "$DATA/tiny-qwen3/draft-vanilla" --policy fixed:2 --port $PORT2 --slots 2 \
  --batch-tokens 32 --ctx 512 2> "$TMP/server2.log" &
PID2=$!
for i in $(seq 1 100); do
  if node -e "fetch('http://127.0.0.1:$PORT2/health').then(r=>process.exit(r.status==200?0:1)).catch(()=>process.exit(1))"; then break; fi
  sleep 0.1
done
node -e '
const fs = require("fs"); const [base, exp] = process.argv.slice(1); const e = JSON.parse(fs.readFileSync(exp, "utf8"));
fetch(base + "/v1/completions", {method: "POST", body: JSON.stringify({prompt: e.prompt, max_tokens: e.n, temperature: 0})})
  .then(r => r.json()).then(j => { if (j.choices[0].text !== e.completion) { console.log("FAIL speculative server text differs"); process.exit(1); }
    return fetch(base + "/metrics"); }).then(r => r.text()).then(m => {
    const d = Number(/dspark_drafts_verified_total (\d+)/.exec(m)[1]);
    if (!(d > 0)) { console.log("FAIL no drafts verified"); process.exit(1); } console.log("speculative server ok, drafts verified " + d); })
  .catch(err => { console.log("FAIL " + err); process.exit(1); });' "http://127.0.0.1:$PORT2" "$TMP/expect.json" || rc=1
kill -TERM $PID2; wait $PID2 || { echo "FAIL speculative server exit status"; cat "$TMP/server2.log"; rc=1; }
# and through the hardware-aware scheduler with the draft bypass (the trained drafter has a
# confidence head): a first start measures the SPS profile coarsely into its own cache dir
for POL in alg1+bypass async; do
PORT3=$((PORT + 2))
XDG_CACHE_HOME="$TMP/cache" "$BIN" serve --model "$MODEL" --draft "$DATA/trained-draft" --policy $POL --port $PORT3 --slots 2 \
  --batch-tokens 32 --ctx 512 2> "$TMP/server3.log" &
PID2=$!
for i in $(seq 1 300); do
  if node -e "fetch('http://127.0.0.1:$PORT3/health').then(r=>process.exit(r.status==200?0:1)).catch(()=>process.exit(1))"; then break; fi
  sleep 0.1
done
node -e '
const fs = require("fs"); const [base, exp, pol] = process.argv.slice(1); const e = JSON.parse(fs.readFileSync(exp, "utf8"));
fetch(base + "/v1/completions", {method: "POST", body: JSON.stringify({prompt: e.prompt, max_tokens: e.n, temperature: 0})})
  .then(r => r.json()).then(j => { if (j.choices[0].text !== e.completion) { console.log("FAIL " + pol + " server text differs"); process.exit(1); }
    return fetch(base + "/metrics"); }).then(r => r.text()).then(m => {
    if (!m.includes("dspark_policy_info{policy=\"" + pol + "\"} 1") || !/\ndspark_rounds_bypassed_total \d+/.test(m)) {
      console.log("FAIL /metrics lacks the policy or the bypass counter"); process.exit(1); }
    console.log(pol + " server ok"); })
  .catch(err => { console.log("FAIL " + err); process.exit(1); });' "http://127.0.0.1:$PORT3" "$TMP/expect.json" "$POL" || rc=1
kill -TERM $PID2; wait $PID2 || { echo "FAIL $POL server exit status"; cat "$TMP/server3.log"; rc=1; }
grep -q "SPS profile" "$TMP/server3.log" || { echo "FAIL no SPS profile line"; cat "$TMP/server3.log"; rc=1; }
done
# cached, unless every measurement met a busy machine (then the curve is capped and not cached:
# src/profile.c), which a loaded 2-core CI machine running tests in parallel can be
ls "$TMP"/cache/dspark/sps-*.json > /dev/null 2>&1 || grep -q "capped, not cached" "$TMP"/server3*.log ||
  { echo "FAIL no cached SPS profile"; rc=1; }
exit $rc
