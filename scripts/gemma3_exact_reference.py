#!/usr/bin/env python3
"""Build the float64 ground-truth reference for the real Gemma 3 270M (Q4_K_M GGUF).

Hugging Face `transformers`' Gemma3ForCausalLM (text only) in float64, on the GGUF's weights
exactly dequantized by g4rt (llama.cpp's +1 on every Gemma RMSNorm weight undone), teacher-forced
on the llama.cpp reference's sequences (ids_i + llama's greedy_i). Writes the fixtures' format:
ids_i, greedy_i (= llama's, the sequence forced), topk_ids_i / topk_val_i (16 largest logits at
every position, descending) and last_i (all logits at the last prompt position).

transformers computes a few things in float32 even in a float64 model (RMSNorm upcasts with
.float(), RoPE inv_freq/cos/sin are built in float32, eager softmax uses dtype=float32). Those are
patched here to float64 so the reference is float64 end to end; --stock keeps transformers as is.

Needs: pip install torch==2.13.0 transformers   (CPU; about 3 GB of RAM)

Usage:
  python scripts/gemma3_exact_reference.py [--model .cache/gemma-3-270m-q4_k_m.gguf]
      [--ref /work/shared/fixtures/ref/gemma3-270m-Q4_K_M.llama.npz]
      [--out .cache/gemma3-270m-Q4_K_M.exact.npz] [--stock] [--hidden FILE.npz]
--hidden also saves the residual stream after every layer (and the final norm) per prompt, for
localizing a runtime's divergence layer by layer.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from g4rt.gguf.reader import GGUFFile
from g4rt.gguf.quant_types import dequantize_rows

ROOT = Path(__file__).resolve().parent.parent
TOPK = 16


def config_from_gguf(f: GGUFFile):
    from transformers import Gemma3TextConfig

    a = f.get("general.architecture")
    assert a == "gemma3", a
    g = lambda k: f.get(f"gemma3.{k}")
    n_layers = int(g("block_count"))
    n_embd = int(g("embedding_length"))
    n_head = int(g("attention.head_count"))
    head_dim = int(g("attention.key_length"))
    assert int(g("attention.value_length")) == head_dim
    vocab = f.tensor("token_embd.weight").n_rows
    assert not f.has_tensor("output.weight"), "expected a tied output embedding"
    assert not f.has("gemma3.final_logit_softcapping") and not f.has("gemma3.attn_logit_softcapping")
    # llama.cpp (LLM_ARCH_GEMMA3): sliding-window pattern 6, local RoPE base 10000, no scaling;
    # attention scale 1/sqrt(head_dim) except the 27B, i.e. query_pre_attn_scalar = head_dim here.
    assert not f.has("gemma3.rope.scaling.type") and not f.has("gemma3.rope.scaling.factor")
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=n_embd,
        intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=int(g("attention.head_count_kv")),
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=int(g("attention.sliding_window")),
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": float(g("rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        hidden_activation="gelu_pytorch_tanh",
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        tie_word_embeddings=True,
        max_position_embeddings=int(g("context_length")),
        attn_implementation="eager",
    )
    return cfg


def patch_float64():
    """Make transformers' Gemma 3 compute in the model's dtype (float64) everywhere."""
    import transformers.models.gemma3.modeling_gemma3 as m

    def norm_forward(self, x):
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return out * (1.0 + self.weight.to(x.dtype))

    m.Gemma3RMSNorm.forward = norm_forward

    def rope_forward(self, x, position_ids, layer_type):
        base = self.config.rope_parameters[layer_type]["rope_theta"]
        dim = self.config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    m.Gemma3RotaryEmbedding.forward = rope_forward

    def eager(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kw):
        assert softcap is None
        key = m.repeat_kv(key, module.num_key_value_groups)
        value = m.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    m.eager_attention_forward = eager


HF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    blk, n, kind, w = gguf_name.split(".")
    assert blk == "blk" and w == "weight", gguf_name
    return f"model.layers.{n}.{HF_NAMES[kind]}.weight"


def load_model(path: str, stock: bool):
    from transformers import Gemma3ForCausalLM

    if not stock:
        patch_float64()
    f = GGUFFile(path)
    cfg = config_from_gguf(f)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    params = dict(model.named_parameters())
    state = {}
    for name in f.tensors:
        t = f.tensor(name)
        w = torch.from_numpy(dequantize_rows(t.raw, t.qtype, t.n_cols).astype(np.float64))
        if name.endswith("norm.weight"):
            w = w.reshape(-1) - 1.0  # llama.cpp's converter stores 1 + w; HF computes x * (1 + w)
        hn = hf_name(name)
        assert tuple(params[hn].shape) == tuple(w.shape), (name, hn, params[hn].shape, w.shape)
        state[hn] = w
    missing = set(params) - set(state) - {"lm_head.weight"}
    assert not missing, missing
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    # non-persistent buffers (embed_scale, RoPE inv_freq) are still on meta: rebuild them
    emb = model.model.embed_tokens
    emb.embed_scale = torch.tensor(cfg.hidden_size ** 0.5, dtype=torch.float64)
    rot = model.model.rotary_emb
    for lt in rot.layer_types:
        inv, _ = rot.compute_default_rope_parameters(cfg, "cpu", layer_type=lt)
        setattr(rot, f"{lt}_inv_freq", inv)
        setattr(rot, f"{lt}_original_inv_freq", inv.clone())
    model.to(torch.float64)
    assert model.lm_head.weight.data_ptr() == emb.weight.data_ptr()
    for n, b in list(model.named_parameters()) + list(model.named_buffers()):
        assert b.device.type == "cpu", n
    model.eval()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / ".cache/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--ref", default="/work/shared/fixtures/ref/gemma3-270m-Q4_K_M.llama.npz")
    ap.add_argument("--out", default=str(ROOT / ".cache/gemma3-270m-Q4_K_M.exact.npz"))
    ap.add_argument("--stock", action="store_true", help="do not patch transformers' float32 upcasts")
    ap.add_argument("--hidden", help="also save per-layer residual streams here")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, args.stock)
    ref = np.load(args.ref)
    out, hidden = {}, {}
    with torch.no_grad():
        # sanity: greedy continuation of the first prompt ("The capital of France is")
        ids0 = torch.from_numpy(ref["ids_0"].astype(np.int64))[None]
        seq = ids0
        for _ in range(12):
            nxt = model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        print("greedy_0 (HF):   ", seq[0, ids0.shape[1]:].tolist())
        print("greedy_0 (llama):", ref["greedy_0"][:12].tolist())

        i = 0
        while f"ids_{i}" in ref:
            t0 = time.time()
            ids, greedy = ref[f"ids_{i}"], ref[f"greedy_{i}"]
            seq = torch.from_numpy(np.concatenate([ids, greedy]).astype(np.int64))[None]
            o = model(seq, output_hidden_states=bool(args.hidden))
            logits = o.logits[0]
            assert logits.dtype == torch.float64
            v, k = torch.topk(logits, TOPK, dim=-1)
            out[f"ids_{i}"] = ids.astype(np.int32)
            out[f"greedy_{i}"] = greedy.astype(np.int32)
            out[f"topk_ids_{i}"] = k.numpy().astype(np.int32)
            out[f"topk_val_{i}"] = v.numpy().astype(np.float32)
            out[f"last_{i}"] = logits[len(ids) - 1].numpy().astype(np.float32)
            if args.hidden:
                # hidden_states[0] = scaled embeddings, [l+1] = after layer l, last = after final norm
                hidden[f"h_{i}"] = torch.stack(o.hidden_states)[:, 0].numpy()
            # how often the forced (llama.cpp greedy) token is this reference's own top-1
            own = k[len(ids) - 1:len(ids) + len(greedy) - 1, 0].numpy()
            agree = float((own == greedy).mean())
            print(f"prompt {i}: {seq.shape[1]} positions, {time.time() - t0:.1f}s; llama's greedy token is "
                  f"the top-1 here at {agree:.3f} of the {len(greedy)} continuation steps", flush=True)
            i += 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **out)
    print("wrote", args.out)
    if args.hidden:
        np.savez(args.hidden, **hidden)
        print("wrote", args.hidden)


if __name__ == "__main__":
    sys.exit(main())
