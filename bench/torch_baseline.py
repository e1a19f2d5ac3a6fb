#!/usr/bin/env python3
"""torch_baseline.py - the PyTorch + transformers baseline for bench_cuda (issue 7): step times
of a Qwen3-4B-shaped model (random BF16 weights, as bench_cuda) on the same GPU.

  python3 bench/torch_baseline.py [--ctx 512] [--reps 20] [--json OUT]

Eager: DynamicCache, SDPA; a forward of k new tokens (k = 1 decode, k > 1 verify) after a
context of --ctx tokens, median of --reps timed steps (the cache is cropped back each time).
(A StaticCache + torch.compile(mode="reduce-overhead") variant hit a device-side assert with
transformers 5.17 on 2026-12-01 and is not here yet.)
Needs torch + transformers (the GPU machine has both); nothing of it runs in ctest.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.cache_utils import DynamicCache


def qwen3_4b():
    return Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=40960,
                       torch_dtype="bfloat16", attn_implementation="sdpa")


def timed(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(qwen3_4b()).to(torch.bfloat16).eval()
    ids = torch.randint(0, 151936, (1, a.ctx + 16), device="cuda")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ctx": a.ctx, "eager_ms": {}}
    with torch.inference_mode():
        cache = DynamicCache()
        model(ids[:, :a.ctx], past_key_values=cache, use_cache=True)
        for k in (1, 2, 4, 8, 16):
            def step():
                model(ids[:, a.ctx:a.ctx + k], past_key_values=cache, use_cache=True)
                cache.crop(a.ctx)
            out["eager_ms"][k] = 1e3 * timed(step, a.reps)
            print(f"eager  {k:2d} tokens: {out['eager_ms'][k]:.2f} ms", flush=True)
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
