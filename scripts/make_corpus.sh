#!/usr/bin/env bash
# Builds the text corpus of the embedded default model (issue 5) from files that Debian
# packages provide, deterministically: Python 3.11's standard library sources
# (libpython3.11-minimal / -stdlib), C headers (libc6-dev, /usr/include/*.h) and English prose
# (the READMEs, NEWS and text files under /usr/share/doc, and /usr/share/common-licenses).
# Files are taken in sorted order; a file goes to the held-out split when the first hex digit
# of the md5 of its path is 0 (about 1/16 of the files). Output: OUT/train.txt, OUT/heldout.txt,
# OUT/manifest.tsv (path, split, bytes, md5 of content).
# usage: scripts/make_corpus.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: make_corpus.sh OUT_DIR}
mkdir -p "$OUT"
: > "$OUT/train.txt.tmp"; : > "$OUT/heldout.txt.tmp"; : > "$OUT/manifest.tsv.tmp"
emit() { # path
  local f=$1 split text
  case $f in
    *.gz) text=$(zcat -- "$f" 2>/dev/null || true) ;;
    *) text=$(cat -- "$f") ;;
  esac
  [ -n "$text" ] || return 0
  # skip binary-looking files
  if printf '%s' "$text" | head -c 4096 | grep -qP '[\x00-\x08\x0e-\x1f]'; then return 0; fi
  if [ "$(printf '%s' "$f" | md5sum | cut -c1)" = 0 ]; then split=heldout; else split=train; fi
  printf '%s\n\n' "$text" >> "$OUT/$split.txt.tmp"
  printf '%s\t%s\t%s\t%s\n' "$f" "$split" "${#text}" "$(printf '%s' "$text" | md5sum | cut -d' ' -f1)" >> "$OUT/manifest.tsv.tmp"
}
export LC_ALL=C
{
  ls /usr/lib/python3.11/*.py
  ls /usr/include/*.h
  ls /usr/share/common-licenses/*
  ls /usr/share/doc/*/README* /usr/share/doc/*/NEWS* /usr/share/doc/*/*.txt 2>/dev/null || true
} | sort -u | while read -r f; do [ -f "$f" ] && emit "$f"; done
for f in train.txt heldout.txt manifest.tsv; do mv "$OUT/$f.tmp" "$OUT/$f"; done
wc -c "$OUT/train.txt" "$OUT/heldout.txt"
