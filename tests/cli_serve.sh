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
trap 'kill -9 $PID 2>/dev/null || true' EXIT
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
exit $rc
