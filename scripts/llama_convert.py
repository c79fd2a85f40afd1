"""llama.cpp's `convert_hf_to_gguf.py` (vendored in the llama-cpp-python sdist, unpacked by
scripts/build_llama_bench.sh) on a fixture's HF checkpoint, with the converter's own set_vocab
replaced by a copy of another GGUF's tokenizer.* metadata: the tiny fixtures have no real
tokenizer. Shared by the make_*_fixtures.py scripts; runs the converter in a child interpreter
(this one's: it needs torch and numpy, not g4rt)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA = ROOT / ".cache" / "llama-bench" / "src" / "0.3.36" / "vendor" / "llama.cpp"

_WRAPPER = r"""
import sys
sys.path.insert(0, {llama!r}); sys.path.insert(0, {llama!r} + "/gguf-py")
sys.argv = ["convert_hf_to_gguf.py", {hf!r}, "--outtype", "f32", "--outfile", {out!r}] + {extra!r}
import gguf
import convert_hf_to_gguf as conv
from conversion import gemma

def copy_vocab(self):
    r = gguf.GGUFReader({vocab!r})
    for field in r.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            vals = [field.parts[i] for i in field.data]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(v).decode("utf-8", "surrogateescape") for v in vals]
            else:
                vals = [v.tolist()[0] for v in vals]
            self.gguf_writer.add_array(field.name, vals)
        elif kind == gguf.GGUFValueType.STRING:
            self.gguf_writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode())
        else:
            self.gguf_writer.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], kind)

gemma.{model_class}.set_vocab = copy_vocab
conv.main()
"""


def convert(hf: Path, out: Path, vocab_gguf: Path, model_class: str = "Gemma4Model", mmproj: bool = False) -> None:
    """Convert checkpoint `hf` to F32 GGUF `out` (its projector with mmproj), the vocabulary taken
    from `vocab_gguf`; model_class: the converter's class in conversion/gemma.py whose set_vocab
    is replaced (Gemma4Model, Gemma4AssistantModel)."""
    code = _WRAPPER.format(llama=str(LLAMA), hf=str(hf), out=str(out), vocab=str(vocab_gguf),
                           extra=["--mmproj"] if mmproj else [], model_class=model_class)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=LLAMA)
