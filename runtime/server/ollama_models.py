"""What Ollama's model endpoints say about the served GGUF file (/api/tags, /api/show, /api/ps):
names, size, a cheap digest, `details` and `model_info`, all read from the file's header."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Optional

import gguf

#: arrays longer than this are shown as [] unless /api/show asks for `verbose` (as Ollama does
#: for the vocabulary, merges and scores)
SHORT_ARRAY = 1024
#: Ollama's expires_at for a model kept loaded forever (keep_alive -1) lies ~292 years ahead
_FOREVER = timedelta(days=292 * 365)
_GPU_BACKENDS = ("cuda", "vulkan")


def rfc3339(t: datetime) -> str:
    """Go's time format in Ollama's answers: UTC, microseconds, a Z."""
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def tagged(name: str) -> str:
    """Ollama names are model:tag, the tag `latest` when none is given."""
    return name if ":" in name else f"{name}:latest"


def resolve(name: Optional[str], known: tuple[str, ...]) -> Optional[str]:
    """The served name `name` means (with or without `:latest`, any case, as Ollama matches), or None."""
    if not name:
        return None
    want = name.casefold()
    for k in known:
        if want in (k.casefold(), tagged(k).casefold()):
            return k
    return None


def human_number(n: int) -> str:
    """Ollama's parameter_size ("8.0B", "4.27M", "270M")."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.{digits}f}{unit}"
    return str(n)


def _json_safe(v):
    """A header value as strict JSON can carry it (a NaN or infinity in a float key becomes null)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


class ModelCard:
    """The served file described once (the header is already parsed; nothing reads the weights).
    The digest is sha256 over path, size and mtime: stable while the file is unchanged and
    free to compute, unlike a hash of a multi-GB file."""

    def __init__(self, model, names: tuple[str, ...], thinking: bool):
        eng = model.engine
        f = eng.file
        self.file, self.names, self.ctx = f, names, eng.ctx
        st = f.path.stat()
        self.size = st.st_size
        self.modified_at = rfc3339(datetime.fromtimestamp(st.st_mtime, timezone.utc))
        key = f"{f.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        self.digest = hashlib.sha256(key).hexdigest()
        self.family = f.get("general.architecture", "")
        self.parameter_count = sum(int(t.n_cols) * t.n_rows for t in f.tensors.values())
        self.backend = getattr(model, "backend_name", "")
        self.expires_at = rfc3339(datetime.now(timezone.utc) + _FOREVER)
        try:
            self.template = model.chat_template.source
        except Exception:           # a base model of an unknown architecture: no chat format at all
            self.template = ""
        self.capabilities = ["completion"]
        if "tool" in self.template:
            self.capabilities.append("tools")
        if thinking:
            self.capabilities.append("thinking")

    def quantization_level(self) -> str:
        ft = self.file.get("general.file_type", None)
        if isinstance(ft, int):
            try:
                return gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                pass
        # no file type: the most common type among the matrices
        kinds = Counter(t.qtype.name for t in self.file.tensors.values() if len(t.shape) > 1)
        return kinds.most_common(1)[0][0] if kinds else "unknown"

    def details(self) -> dict:
        return {"parent_model": "", "format": "gguf", "family": self.family, "families": [self.family],
                "parameter_size": human_number(self.parameter_count),
                "quantization_level": self.quantization_level()}

    def entries(self) -> list[tuple[str, str]]:
        """(shown name, served name) for every name the model answers to."""
        return [(tagged(n), n) for n in self.names]

    def tags(self) -> dict:
        details = self.details()
        return {"models": [{"name": shown, "model": shown, "modified_at": self.modified_at, "size": self.size,
                            "digest": self.digest, "details": details} for shown, _ in self.entries()]}

    def ps(self) -> dict:
        vram = self.size if self.backend in _GPU_BACKENDS else 0
        details = self.details()
        return {"models": [{"name": shown, "model": shown, "size": self.size, "digest": self.digest,
                            "details": details, "expires_at": self.expires_at, "size_vram": vram,
                            "context_length": self.ctx} for shown, _ in self.entries()]}

    def model_info(self, verbose: bool) -> dict:
        f = self.file
        info: dict = {}
        for k in f.keys:
            if k == "tokenizer.chat_template":
                continue                    # shown as `template`
            entry = f.header.kv[k]
            if entry.subtype is not None and entry.count > SHORT_ARRAY and not verbose:
                info[k] = []
            else:
                info[k] = _json_safe(f.get(k))
        info["general.parameter_count"] = self.parameter_count
        return dict(sorted(info.items()))

    def show(self, verbose: bool) -> dict:
        params = [("num_ctx", str(self.ctx))]
        return {
            "modelfile": f"# Modelfile generated by g4rt\nFROM {self.file.path}\n",
            "parameters": "\n".join(f"{k:<30} {v}" for k, v in params),
            "template": self.template,
            "license": str(self.file.get("general.license", "")),
            "details": self.details(),
            "model_info": self.model_info(verbose),
            "capabilities": list(self.capabilities),
            "modified_at": self.modified_at,
        }
