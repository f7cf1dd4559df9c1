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
