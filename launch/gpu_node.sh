#!/usr/bin/env bash
# Pre-train on the GPUs of one node, or on one node of a multi-node job.
#
#   launch/gpu_node.sh WORKDIR=runs/base CONFIG=configs/pretrain.py \
#       --config.data.dir=/data/lxmert --config.mesh.fsdp=8
#
# KEY=VALUE arguments set the variables below; everything else is passed to
# `python -m lxmert_jax.main` (config overrides). For several nodes, run this
# on every node with NNODES, NODE_RANK and COORDINATOR=host:port set (or use
# launch/gpu_slurm.sbatch, where Slurm provides them).
set -euo pipefail

WORKDIR=runs/base
CONFIG=configs/pretrain.py
NNODES=1
NODE_RANK=0
COORDINATOR=""
ARGS=()
for arg in "$@"; do
  case "$arg" in
    WORKDIR=*|CONFIG=*|NNODES=*|NODE_RANK=*|COORDINATOR=*) declare "$arg" ;;
    *) ARGS+=("$arg") ;;
  esac
done

# XLA GPU flags for data/FSDP parallel transformer training: overlap
# collectives with compute (latency-hiding scheduler) and batch small
# all-gathers / reduce-scatters into larger ones.
export XLA_FLAGS="${XLA_FLAGS:-} \
  --xla_gpu_enable_latency_hiding_scheduler=true \
  --xla_gpu_enable_triton_gemm=false \
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
  --xla_gpu_all_gather_combine_threshold_bytes=134217728 \
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864"
# Let XLA take most of the GPU memory up front instead of growing on demand.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

if [[ "$NNODES" -gt 1 ]]; then
  export LXMERT_JAX_DISTRIBUTED=1
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR"
  export JAX_NUM_PROCESSES="$NNODES"
  export JAX_PROCESS_ID="$NODE_RANK"
fi

exec python -m lxmert_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${ARGS[@]}"
