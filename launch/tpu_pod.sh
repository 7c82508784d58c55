#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: the same command on every host.
#
#   launch/tpu_pod.sh TPU=my-v4-32 ZONE=us-central2-b WORKDIR=gs://bucket/runs/base \
#       --config.data.dir=gs://bucket/lxmert --config.mesh.fsdp=-1 --config.mesh.data=1
#
# KEY=VALUE arguments set the variables below; everything else is passed to
# `python -m lxmert_jax.main`. The repository is expected at REPO on every
# host with its virtualenv at REPO/.venv (e.g. set up with `make install`).
# On TPU, jax.distributed.initialize() finds its peers by itself.
set -euo pipefail

TPU=""
ZONE=""
PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
REPO='~/lxmert-jax'
WORKDIR=runs/base
CONFIG=configs/pretrain.py
ARGS=()
for arg in "$@"; do
  case "$arg" in
    TPU=*|ZONE=*|PROJECT=*|REPO=*|WORKDIR=*|CONFIG=*) declare "$arg" ;;
    *) ARGS+=("$(printf '%q' "$arg")") ;;
  esac
done
if [[ -z "$TPU" || -z "$ZONE" ]]; then
  echo "usage: $0 TPU=name ZONE=zone [PROJECT=..] [WORKDIR=..] [CONFIG=..] [--config.x=y ...]" >&2
  exit 2
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --project="$PROJECT" --worker=all \
  --command "cd $REPO && LXMERT_JAX_DISTRIBUTED=1 .venv/bin/python -m lxmert_jax.main \
    --config=$CONFIG --workdir=$WORKDIR ${ARGS[*]}"
