#!/usr/bin/env python3
"""torch_baseline.py - the PyTorch + transformers baseline for bench_cuda (issue 7): step times
of a Qwen3-4B-shaped model (random BF16 weights, as bench_cuda) on the same GPU.

  python3 bench/torch_baseline.py [--ctx 512] [--reps 20] [--json OUT]

Eager: DynamicCache, SDPA; a forward of k new tokens (k = 1 decode, k > 1 verify) after a
context of --ctx tokens, median of --reps timed steps (the cache is cropped back each time).
Static: StaticCache, eager, then torch.compile(mode="reduce-overhead") (CUDA graphs); every
step passes cache_position / position_ids ctx..ctx+k-1 and, untimed after it, sets each
layer's fill counter back to ctx (transformers 5.17's StaticLayer keeps a cumulative_length
and writes there: without the reset every timed step moves on and the write runs past
max_cache_len, the device-side assert of 2026-12-01).
Each variant is tried on its own: one that fails prints its error and the others still run.
Needs torch + transformers (the GPU machine has both); nothing of it runs in ctest.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.cache_utils import DynamicCache, StaticCache


def qwen3_4b():
    return Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=40960,
                       torch_dtype="bfloat16", attn_implementation="sdpa")


def timed(fn, reps, reset=None):
    """Median seconds of fn(); reset (untimed) runs after each call."""
    for _ in range(3):
        fn()
        if reset:
            reset()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
        if reset:
            reset()
    return statistics.median(ts)


def static_cache(model, max_len):
    """A StaticCache for batch 1; the constructor's arguments changed across transformers
    versions, so try the current one first."""
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len, device="cuda",
                           dtype=torch.bfloat16)


def crop_static(cache, n):
    """Back to n cached tokens: rows past n are rewritten by the next step."""
    for layer in cache.layers:
        c = getattr(layer, "cumulative_length", None)
        if isinstance(c, torch.Tensor):
            c.fill_(n)
        elif c is not None:
            layer.cumulative_length = n


def run_static(model, fwd, ids, a, ks, res, name):
    cache = static_cache(model, a.ctx + 16)
    with torch.inference_mode():
        pos = torch.arange(0, a.ctx, device="cuda")
        model(ids[:, :a.ctx], past_key_values=cache, use_cache=True, cache_position=pos, position_ids=pos[None])
        for k in ks:
            pos = torch.arange(a.ctx, a.ctx + k, device="cuda")
            x = ids[:, a.ctx:a.ctx + k].clone()
            pid = pos[None].clone()

            def step():
                return fwd(input_ids=x, past_key_values=cache, use_cache=True, cache_position=pos, position_ids=pid)
            t0 = time.perf_counter()
            step()  # the first call compiles (reduce-overhead: records CUDA graphs on later calls)
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            crop_static(cache, a.ctx)
            res[k] = 1e3 * timed(step, a.reps, reset=lambda: crop_static(cache, a.ctx))
            print(f"{name:18s} {k:2d} tokens: {res[k]:.2f} ms  (first call {warm:.1f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--tokens", default="1,2,4,8,16", help="step sizes k (default 1,2,4,8,16)")
    ap.add_argument("--compile-tokens", default="1,8", help="step sizes for torch.compile (each one compiles; default 1,8)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    a = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(qwen3_4b()).to(torch.bfloat16).eval()
    ids = torch.randint(0, 151936, (1, a.ctx + 16), device="cuda")
    ks = [int(k) for k in a.tokens.split(",")]
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ctx": a.ctx,
           "eager_ms": {}, "static_eager_ms": {}, "static_compiled_ms": {}, "errors": {}}
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except Exception:
        pass
    with torch.inference_mode():
        cache = DynamicCache()
        model(ids[:, :a.ctx], past_key_values=cache, use_cache=True)
        for k in ks:
            def step():
                model(ids[:, a.ctx:a.ctx + k], past_key_values=cache, use_cache=True)
                cache.crop(a.ctx)
            out["eager_ms"][k] = 1e3 * timed(step, a.reps)
            print(f"eager           {k:2d} tokens: {out['eager_ms'][k]:.2f} ms", flush=True)
        del cache
    variants = [("static_eager_ms", model, ks)]
    if not a.no_compile:
        torch._dynamo.config.cache_size_limit = 64
        variants.append(("static_compiled_ms", torch.compile(model, mode="reduce-overhead", dynamic=False),
                         [int(k) for k in a.compile_tokens.split(",")]))
    for name, fwd, kk in variants:
        try:
            run_static(model, fwd, ids, a, kk, out[name], name)
        except Exception as e:  # report and go on: one broken variant must not hide the others
            out["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            print(f"{name}: FAILED: {out['errors'][name]}", flush=True)
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
