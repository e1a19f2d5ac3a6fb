#!/usr/bin/python3
"""st_to_gguf.py - convert bench_cpu's Qwen3-shaped safetensors model to GGUF (same BF16 weights)
so that ik_llama.cpp / llama.cpp's llama-bench can run the very same model.

  /usr/bin/python3 bench/st_to_gguf.py --gguf-py PATH/TO/ik_llama.cpp/gguf-py MODEL_DIR OUT.gguf

Needs numpy (Debian: python3-numpy) and the gguf-py package of the llama.cpp fork (passed as a
path; nothing of it is in this repository). 2-D weights are written as BF16 bytes unchanged; the
1-D norm weights as F32 (what convert_hf_to_gguf.py does; exact for BF16 values). There is no
tokenizer: tokenizer model "none" with vocab_size dummy tokens, which is all llama-bench needs.
"""
import argparse
import json
import struct
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-py", required=True, help="path to the fork's gguf-py directory")
    ap.add_argument("model_dir")
    ap.add_argument("out")
    a = ap.parse_args()
    sys.path.insert(0, a.gguf_py)
    import numpy as np
    import gguf

    cfg = json.load(open(f"{a.model_dir}/config.json"))
    raw = open(f"{a.model_dir}/model.safetensors", "rb").read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    base = 8 + hlen

    def tensor(name):
        t = header[name]
        assert t["dtype"] == "BF16", (name, t["dtype"])
        b, e = t["data_offsets"]
        return np.frombuffer(raw, dtype=np.uint16, count=(e - b) // 2, offset=base + b).reshape(t["shape"])

    w = gguf.GGUFWriter(a.out, "qwen3")
    L = cfg["num_hidden_layers"]
    w.add_name("qwen3-0.6b-shape-random-bf16")
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("none")

    def put(gname, hname):
        t = tensor(hname)
        if t.ndim == 1:  # norms: F32, exact widening of BF16
            w.add_tensor(gname, (t.astype(np.uint32) << 16).view(np.float32))
        else:
            w.add_tensor(gname, np.ascontiguousarray(t).view(np.uint8), raw_dtype=gguf.GGMLQuantizationType.BF16)

    put("token_embd.weight", "model.embed_tokens.weight")
    put("output_norm.weight", "model.norm.weight")
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(L):
        for g, h in names.items():
            put(f"blk.{i}.{g}.weight", f"model.layers.{i}.{h}.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
