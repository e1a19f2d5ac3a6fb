#!/usr/bin/env bash
# `dspark tokenize` and `dspark generate` from the command line: byte-for-byte files, chat files,
# a tokenizer-only directory, --print-ids output, and one-line errors for bad input.
# ctest: labels=cli
set -uo pipefail
BIN=${DSPARK_BIN:?}; DATA=${DSPARK_TEST_DATA:?}; TMP=${DSPARK_TEST_TMP:-/tmp}/cli_tok.$$
mkdir -p "$TMP"
pass=0; fail=0
ok() { if [ "$1" = "$2" ]; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $3: got '$1' want '$2'"; fi; }
one_line_error() { # cmd... : must fail with exactly one stderr line containing $NEEDLE
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == *"$NEEDLE"* ]]; then pass=$((pass+1));
  else fail=$((fail+1)); echo "FAIL error for: $* -> rc $rc '$out'"; fi
}
TOK=$DATA/qwen3-tokenizer
printf 'Hello, world!' > "$TMP/a.txt"
ok "$("$BIN" tokenize --model "$TOK" --text-file "$TMP/a.txt")" "9707 11 1879 0" "hello"
printf 'Hello, world!\n' > "$TMP/b.txt"
ok "$("$BIN" tokenize --model "$TOK" --text-file "$TMP/b.txt")" "9707 11 1879 4894" "trailing newline kept (!\\n is one token)"
: > "$TMP/empty.txt"
ok "$("$BIN" tokenize --model "$TOK" --text-file "$TMP/empty.txt" | od -c | head -1)" "0000000  \\n" "empty file -> empty line"
printf '[{"role":"user","content":"Hello, world!"}]' > "$TMP/chat.json"
ok "$("$BIN" tokenize --model "$TOK" --chat-file "$TMP/chat.json")" "151644 872 198 9707 11 1879 0 151645 198 151644 77091 198 151667 271 151668 271" "chat"
ok "$("$BIN" tokenize --model "$TOK" --chat-file "$TMP/chat.json" --think)" "151644 872 198 9707 11 1879 0 151645 198 151644 77091 198" "chat --think"
printf '[{"role":"user",' > "$TMP/bad.json"
NEEDLE="bad JSON" one_line_error "$BIN" tokenize --model "$TOK" --chat-file "$TMP/bad.json"
NEEDLE="cannot open" one_line_error "$BIN" tokenize --model "$TOK" --text-file "$TMP/none.txt"
NEEDLE="tokenizer.json" one_line_error "$BIN" tokenize --model "$TMP" --text-file "$TMP/a.txt"
NEEDLE="unknown flag" one_line_error "$BIN" tokenize --model "$TOK" --text-file "$TMP/a.txt" --bogus
# generate: --prompt-ids + --print-ids needs no tokenizer and prints only ids on one line
T=$DATA/tiny-qwen3/target
out=$("$BIN" generate --model "$T" --prompt-ids 1,2,3,4 -n 5 --temp 0 --print-ids 2>/dev/null)
ok "$(printf '%s\n' "$out" | wc -l)" 1 "print-ids one line"
ok "$(printf '%s' "$out" | wc -w)" 5 "print-ids count"
# seeded sampling reproduces; a different seed differs (over 32 tokens)
a=$("$BIN" generate --model "$T" --prompt-ids 1,2,3 -n 32 --temp 1 --seed 5 --print-ids 2>/dev/null)
b=$("$BIN" generate --model "$T" --prompt-ids 1,2,3 -n 32 --temp 1 --seed 5 --print-ids 2>/dev/null)
c=$("$BIN" generate --model "$T" --prompt-ids 1,2,3 -n 32 --temp 1 --seed 6 --print-ids 2>/dev/null)
ok "$a" "$b" "seed reproduces"
[ "$a" != "$c" ] && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL seeds 5 and 6 gave the same tokens"; }
# text without a tokenizer: a clear error
NEEDLE="tokenizer.json" one_line_error "$BIN" generate --model "$T" --prompt "hi"
NEEDLE="out of range" one_line_error "$BIN" generate --model "$T" --prompt-ids 1,2 --top-p 1.5
NEEDLE="exactly one" one_line_error "$BIN" generate --model "$T" --prompt-ids 1 --prompt x
NEEDLE="unknown command" one_line_error "$BIN" frobnicate
"$BIN" generate --help | grep -q "usage: dspark generate" && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL generate --help"; }
echo "$pass passed, $fail failed"
[ $fail = 0 ]
