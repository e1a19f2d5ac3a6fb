#!/usr/bin/env python3
"""Generates tokenizer test cases with the `tokenizers` library (run on a machine that has it):
   python3 tools/gen_tokenizer_cases.py TOKENIZER_DIR OUT.jsonl [N]
Each line: {"text": ..., "ids": [...]}, ids from Tokenizer.encode(text, add_special_tokens=False).
Covers many scripts, NFC/NFD forms, CRLF, emoji ZWJ sequences, long whitespace runs, digits,
contractions, code, special tokens inside text and random strings. Seeded: reproducible."""
import json, random, sys, unicodedata
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
out = open(sys.argv[2], "w", encoding="utf-8")
n = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
rng = random.Random(980406)
words = ["the", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "I'm", "you're", "it's", "we'll", "they've",
         "DON'T", "naïve", "café", "résumé", "Zürich", "straße", "Ελληνικά", "русский", "язык", "中文", "日本語", "한국어",
         "العربية", "עברית", "हिन्दी", "ไทย", "tiếng Việt", "😀", "👩‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "∑", "∀x∈ℝ", "½", "Ⅻ", "①",
         "def", "return", "int", "main()", "{", "}", "()", "[]", "=>", "->", "!=", "==", "&&", "||", "0x1F", "3.14159",
         "1234567890", "2026", "e-mail", "http://example.com/a?b=c", "C:\\path\\file.txt", "<|im_start|>", "<|im_end|>",
         "<think>", "</think>", "<|endoftext|>", "\t", "\n", "\r\n", "  ", "    ", "\u00a0", "\u3000", "\u200b", "ﬁ", "Å", "Å"]
seps = [" ", " ", " ", "", "\n", "\r\n", "\t", "  ", ", ", ". ", "\n\n", "   \n"]
cases = set()
def add(t):
    if t not in cases:
        cases.add(t)
        out.write(json.dumps({"text": t, "ids": tok.encode(t, add_special_tokens=False).ids}, ensure_ascii=False) + "\n")
for w in words:
    add(w); add(" " + w); add(w + "\n")
for k in (1, 2, 3, 7, 16, 17, 33, 100, 257):
    add(" " * k); add("\n" * k); add("\t" * k); add("a" + " " * k + "b"); add("x" + "\r\n" * k); add("9" * k)
for base in ["café", "Ångström", "ñandú", "한국어", "Ελληνικά"]:
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        add(unicodedata.normalize(form, base))
while len(cases) < n:
    r = rng.random()
    if r < 0.6:
        t = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(1, 12)))
    elif r < 0.8:
        t = "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x24f), rng.randint(0x370, 0x52f),
                                    rng.randint(0x3040, 0x30ff), rng.randint(0x4e00, 0x4fff), rng.randint(0x1f300, 0x1f64f),
                                    rng.choice([0x200d, 0xfe0f, 0x301, 0x308, 0x20, 0x0a, 0x0d, 0x09])]))
                    for _ in range(rng.randint(1, 40)))
    else:
        t = "".join(rng.choice(["    ", "def f(x):\n", "return x + 1\n", "if (a < b) {\n", "}\n", "# comment\n", "x = [1, 2, 3]\n",
                                "print('hi')\n", "\t\tint y = 0;\n", "/* c */", "\r\n"]) for _ in range(rng.randint(1, 10)))
    add(t)
print(len(cases), "cases")
