#!/usr/bin/env python3
"""Prompts for the embedded default model (issue 5), drawn deterministically from the corpus
that scripts/make_corpus.sh builds (never from the benchmark prompt sets).

A prompt is a run of whole lines starting at a random non-empty line, at least MIN_CHARS and
at most MAX_CHARS long: the target continues it (the default target is a base LM with no chat
template, so gen-data and eval feed the text raw). Held-out prompts are tagged by the kind of
file they come from (manifest.tsv gives each file's place in heldout.txt): `code` (Python
sources, C headers) or `prose` (package documentation, licences).

usage: make_prompts.py CORPUS_DIR OUT_DIR [--train N] [--heldout N] [--seed S]
writes OUT_DIR/train_prompts.jsonl, heldout_code.jsonl, heldout_prose.jsonl ({"turns": [text]})
"""
import argparse
import json
import os
import random

MIN_CHARS, MAX_CHARS = 160, 480


def files_of(corpus, split):
    """(kind, text) of each file of a split, from the manifest's sizes (bytes; make_corpus
    writes each file's text followed by two newlines)."""
    raw = open(os.path.join(corpus, split + ".txt"), "rb").read()
    out, off = [], 0
    for line in open(os.path.join(corpus, "manifest.tsv"), encoding="utf-8", errors="replace"):
        path, sp, size, _ = line.rstrip("\n").split("\t")
        if sp != split:
            continue
        size = int(size)
        text = raw[off:off + size].decode("utf-8", errors="replace")
        off += size + 2
        kind = "code" if path.endswith((".py", ".h")) else "prose"
        out.append((kind, text))
    assert off == len(raw), f"{split}.txt does not match manifest.tsv ({off} != {len(raw)})"
    return out


def sample(files, n, rng, kind=None):
    pool = [t for k, t in files if kind is None or k == kind]
    prompts, seen = [], set()
    while len(prompts) < n:
        lines = rng.choice(pool).split("\n")
        i = rng.randrange(len(lines))
        if not lines[i].strip():
            continue
        text = ""
        for line in lines[i:]:
            if len(text) + len(line) + 1 > MAX_CHARS:
                break
            text += line + "\n"
            if len(text) >= MIN_CHARS:
                break
        if len(text) < MIN_CHARS or text in seen or "\x00" in text:
            continue
        seen.add(text)
        prompts.append(text)
    return prompts


def write(path, prompts):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"turns": [p]}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=3072)
    ap.add_argument("--heldout", type=int, default=128, help="per kind")
    ap.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    write(os.path.join(a.out, "train_prompts.jsonl"), sample(files_of(a.corpus, "train"), a.train, rng))
    held = files_of(a.corpus, "heldout")
    for kind in ("code", "prose"):
        write(os.path.join(a.out, f"heldout_{kind}.jsonl"), sample(held, a.heldout, rng, kind))


if __name__ == "__main__":
    main()
