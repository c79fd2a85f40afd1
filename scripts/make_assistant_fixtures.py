#!/usr/bin/env python3
"""Tiny random-weight Gemma 4 MTP assistants (`gemma4-assistant`) for the fixture targets, and
transformers references for them (issue 26).

Three phases, two interpreters (g4rt never depends on torch):
  build  (torch + transformers + llama.cpp's converter): a `Gemma4AssistantForCausalLM` per target,
         random weights with re-randomized norms and layer scalars (transformers' init makes them
         all 1, which would hide a wrong norm), saved HF-style, then converted by llama.cpp's
         `convert_hf_to_gguf.py` (the vocabulary is copied from the target GGUF, because the
         fixture targets ship no tokenizer.json: the converter's own set_vocab is replaced by that
         copy; everything else is the converter's code path).
  states (g4rt, numpy reference backend): the target states the drafter reads, per case: the
         target's post-norm hidden state of the last cached position, the token after it, and the
         K/V of the target's last full and last sliding layer (the caches the assistant reads).
         The fixture targets match transformers-float64 (fixtures/README.md), so their states are
         taken from g4rt rather than from a transformers target rebuilt from the GGUF.
  ref    (torch, float64): transformers' assistant module on those states, step by step as
         `SinglePositionMultiTokenCandidateGenerator` runs it (same position for every draft,
         argmax token and projected hidden fed back), with `shared_kv_states` built from the
         target caches: full layer = every cached position, sliding layer = the window's
         positions before the query (llama.cpp's key set for a query at the last token's
         position; see docs/speculative.md for why transformers' own cache differs slightly).

  /work/torchenv/bin/python scripts/make_assistant_fixtures.py all     # runs the three phases
Outputs: tests/data/assistant/<target>-assistant-F32.gguf and <target>-assistant.ref.npz (the
HF checkpoints and the target states stay in .cache/assistant-fixtures/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_convert  # noqa: E402  (scripts/llama_convert.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "assistant"
WORK = ROOT / ".cache" / "assistant-fixtures"       # the HF checkpoints and target states (not kept)
FIXTURES = Path(os.environ.get("G4RT_FIXTURES", ROOT.parent / "shared" / "fixtures"))
LLAMA = llama_convert.LLAMA
G4RT_PY = ROOT / ".venv" / "bin" / "python"

#: target stem -> its sliding window, the prompt (fixtures ref index) and the cases' positions
TARGETS = {
    "g4-dense-untied-F32": dict(window=16, prompt=2, positions=[6, 15, 40, 60]),
    "g4-edge-F32": dict(window=8, prompt=2, positions=[5, 9, 33, 60]),
}
LAYER_TYPES = ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, GLOBAL_HEAD_DIM, VOCAB, BACKBONE = 64, 128, 2, 2, 64, 128, 2048, 256
STEPS = 4          # draft steps per case
SEED = 26


# ---- phase 1: build and convert ------------------------------------------------------------------
def build(stem: str) -> Path:
    import torch
    from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4TextConfig

    spec = TARGETS[stem]
    torch.manual_seed(SEED + len(stem))
    text = Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, global_head_dim=GLOBAL_HEAD_DIM,
        layer_types=list(LAYER_TYPES), sliding_window=spec["window"], rms_norm_eps=1e-6,
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, tie_word_embeddings=True,
        max_position_embeddings=4096, final_logit_softcapping=None)
    cfg = Gemma4AssistantConfig(text_config=text, backbone_hidden_size=BACKBONE, use_ordered_embeddings=False)
    model = Gemma4AssistantForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scalar"):
                p.copy_(0.5 + torch.rand_like(p))
            elif p.ndim == 1:                      # norm weights: Gemma 4 multiplies by w itself
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "embed_tokens" in name:           # peaked logits: greedy drafts mean something
                p.copy_(torch.randn_like(p) * 0.6)
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand_like(b))
    hf = WORK / f"{stem}-assistant"
    hf.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf)
    write_token_count(hf, FIXTURES / "models" / f"{stem}.gguf")
    gguf_path = OUT / f"{stem}-assistant-F32.gguf"
    convert(hf, FIXTURES / "models" / f"{stem}.gguf", gguf_path)
    return gguf_path


def write_token_count(hf: Path, target: Path) -> None:
    """The converter trims token_embd to len(tokenizer.json's vocab) + added tokens: write the
    target's token list there (the vocabulary itself is copied by llama_convert.convert)."""
    import gguf
    r = gguf.GGUFReader(str(target))
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB:
        raise SystemExit(f"{target}: {len(vocab)} distinct tokens, expected {VOCAB}")
    (hf / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": []}))


def convert(hf: Path, target: Path, out: Path) -> None:
    llama_convert.convert(hf, out, target, model_class="Gemma4AssistantModel")


# ---- phase 2: the target states (g4rt) -----------------------------------------------------------
def states(stem: str) -> Path:
    from g4rt.engine import Engine
    from g4rt.model.assistant import reads_layers

    spec = TARGETS[stem]
    ref = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    ids = np.concatenate([ref[f"ids_{spec['prompt']}"], ref[f"greedy_{spec['prompt']}"]]).astype(np.int32)
    eng = Engine(FIXTURES / "models" / f"{stem}.gguf", backend="numpy", ctx=128)
    full_src, swa_src = reads_layers(eng.config)
    window = eng.config.layers[swa_src].window
    out = {}
    for c, P in enumerate(spec["positions"]):
        eng.reset()
        eng.forward(ids[:P])
        h = eng.graph(P).read_buffers(["h_out"])["h_out"][-1]
        caches = eng.backend.caches
        for kind, src, first in (("full", full_src, 0), ("swa", swa_src, max(0, P - window + 1))):
            pos = np.arange(first, P)
            for kv in ("k", "v"):
                cache = caches[f"cache_{kv}.{src}"]
                out[f"{kind}_{kv}_{c}"] = cache[pos % cache.shape[0]].astype(np.float32)
        out[f"pos_{c}"] = np.int32(P)
        out[f"token_{c}"] = np.int32(ids[P])
        out[f"hidden_{c}"] = h.astype(np.float32)
    eng.close()
    path = WORK / f"{stem}.states.npz"
    np.savez(path, ids=ids, **out)
    return path


# ---- phase 3: the transformers reference (float64) -----------------------------------------------
def reference(stem: str) -> Path:
    import gguf
    import torch
    from transformers import Gemma4AssistantForCausalLM

    model = Gemma4AssistantForCausalLM.from_pretrained(WORK / f"{stem}-assistant", attn_implementation="eager")
    model = model.double().eval()
    st = np.load(WORK / f"{stem}.states.npz")
    tgt = gguf.GGUFReader(str(FIXTURES / "models" / f"{stem}.gguf"))
    emb = next(t for t in tgt.tensors if t.name == "token_embd.weight")
    table = np.asarray(emb.data, dtype=np.float64).reshape(VOCAB, BACKBONE)   # F32 target
    scale = np.sqrt(np.float64(BACKBONE))

    def kv(c, kind):
        # g4rt cache rows [T, n_kv * D] -> transformers [1, n_kv, T, D]
        return tuple(torch.from_numpy(st[f"{kind}_{x}_{c}"].astype(np.float64))
                     .view(-1, KV_HEADS, st[f"{kind}_{x}_{c}"].shape[1] // KV_HEADS).transpose(0, 1)[None]
                     for x in ("k", "v"))

    out = {}
    n = 0
    while f"pos_{n}" in st:
        shared = {"full_attention": kv(n, "full"), "sliding_attention": kv(n, "swa")}
        tok, h = int(st[f"token_{n}"]), torch.from_numpy(st[f"hidden_{n}"].astype(np.float64))[None, None]
        position = torch.tensor([[int(st[f"pos_{n}"])]])
        logits, proposals = [], []
        for _ in range(STEPS):
            x = torch.from_numpy(table[tok] * scale)[None, None]
            with torch.no_grad():
                o = model(inputs_embeds=torch.cat([x, h], dim=-1), position_ids=position,
                          shared_kv_states=shared, attention_mask=None)
            lg = o.logits[0, -1].numpy()
            tok, h = int(lg.argmax()), o.last_hidden_state
            logits.append(lg.astype(np.float32))
            proposals.append(tok)
        for key in ("pos", "token", "hidden"):
            out[f"{key}_{n}"] = st[f"{key}_{n}"]
        out[f"logits_{n}"] = np.stack(logits)
        out[f"proposals_{n}"] = np.array(proposals, np.int32)
        n += 1
    out["ids"] = st["ids"]
    path = OUT / f"{stem}-assistant.ref.npz"
    np.savez_compressed(path, **out)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["build", "states", "ref", "all"])
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for stem in a.targets:
        if a.phase in ("build", "all"):
            print("built", build(stem))
        if a.phase == "states":
            print("states", states(stem))
        if a.phase == "all":
            subprocess.run([str(G4RT_PY), __file__, "states", "--targets", stem], check=True, cwd=ROOT)
        if a.phase in ("ref", "all"):
            print("reference", reference(stem))
    meta = {s: dict(TARGETS[s], layer_types=LAYER_TYPES, hidden=HIDDEN, steps=STEPS) for s in a.targets}
    (OUT / "recipe.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
