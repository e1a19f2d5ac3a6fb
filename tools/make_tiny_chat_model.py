#!/usr/bin/env python3
"""Writes tests/data/tiny-chat: the tiny-qwen3 fixture target (vocab 512) with a small byte-level
BPE tokenizer in Hugging Face format (256 byte tokens, a few merges, Qwen3's special tokens at ids
500..504, Qwen3's pre-tokenizer regex and chat template), so server and chat tests have a model
with text. Run from the repository root; needs only the standard library."""
import json, os, shutil

src = "tests/data/tiny-qwen3/target"
dst = "tests/data/tiny-chat"
qwen = "tests/data/qwen3-tokenizer"
os.makedirs(dst, exist_ok=True)
for f in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))

# GPT-2 byte <-> unicode map
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
byte_char = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {byte_char[b]: b for b in range(256)}
merges = []
def add_merge(a, b):
    merges.append([a, b]); vocab[a + b] = len(vocab)
for pair in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
             ("r", "e"), ("a", "t"), ("Ġ", "w"), ("e", "n"), ("Ġ", "c"), ("i", "s"), ("o", "r"), ("Ġ", "Ġ")]:
    add_merge(*pair)
tq = json.load(open(os.path.join(qwen, "tokenizer.json")))
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
added = []
for i, s in enumerate(specials):
    added.append({"id": 500 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": s.startswith("<|")})
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
       "normalizer": tq["normalizer"], "pre_tokenizer": tq["pre_tokenizer"], "post_processor": tq["post_processor"],
       "decoder": tq["decoder"],
       "model": dict({k: v for k, v in tq["model"].items() if k not in ("vocab", "merges")}, vocab=vocab, merges=merges)}
json.dump(tok, open(os.path.join(dst, "tokenizer.json"), "w"), ensure_ascii=False)
cfg = json.load(open(os.path.join(qwen, "tokenizer_config.json")))
cfg["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}
cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
json.dump(cfg, open(os.path.join(dst, "tokenizer_config.json"), "w"), ensure_ascii=False, indent=2)
json.dump({"eos_token_id": [502, 500], "temperature": 0.7, "top_k": 20, "top_p": 0.8},
          open(os.path.join(dst, "generation_config.json"), "w"), indent=2)
print("wrote", dst, len(vocab), "tokens +", len(added), "added")
