#!/usr/bin/env python3
"""Generates chat-template cases with transformers' apply_chat_template (run where it is installed):
   python3 tools/gen_chat_cases.py TOKENIZER_DIR OUT.jsonl [N]
Each line: {"messages", "enable_thinking", "add_generation_prompt", "text"}. Seeded."""
import json, random, sys
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
out = open(sys.argv[2], "w", encoding="utf-8")
n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
rng = random.Random(980406)
bits = ["Hello", "How are you?", "def f(x):\n    return x\n", "\n\nleading newlines", "trailing\n\n", "日本語", "😀 ok",
        "<think>\nhidden plan\n</think>\n\nvisible answer", "<think>a</think>b", "no think here", "</think>only close",
        "x</think>\n\ny</think>\nz", "  spaced  ", "", "<tool_response>r</tool_response>"]
for i in range(n):
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": rng.choice(bits)})
    for t in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": rng.choice(bits)})
        if rng.random() < 0.7:
            msgs.append({"role": "assistant", "content": rng.choice(bits)})
    if rng.random() < 0.2 and len(msgs) > 1:
        msgs.insert(rng.randint(1, len(msgs)), {"role": "system", "content": rng.choice(bits)})
    think = rng.random() < 0.5
    gen = rng.random() < 0.8
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, enable_thinking=think)
    out.write(json.dumps({"messages": msgs, "enable_thinking": think, "add_generation_prompt": gen, "text": text},
                         ensure_ascii=False) + "\n")
print(n, "cases")
