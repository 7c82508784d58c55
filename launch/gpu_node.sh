#!/usr/bin/env bash
# Pre-train on the GPUs of one node, or on one node of a multi-node job
# without Slurm (under Slurm use launch/gpu_slurm.sbatch).
#
#   launch/gpu_node.sh WORKDIR=runs/base --config.data.dir=/data/lxmert --config.mesh.fsdp=8
#   # two nodes: run on each, NODE_RANK=0 on the node COORDINATOR names
#   launch/gpu_node.sh WORKDIR=/shared/runs/base NNODES=2 NODE_RANK=0 \
#       COORDINATOR=10.0.0.1:61234 --config.data.dir=/shared/lxmert
#
# One process per node drives all the node's GPUs; the device mesh comes from
# the config (--config.mesh.*). Variables, from the environment or given as
# KEY=VALUE arguments (those win); every other argument goes to
# `python -m lxmert_jax.main` (config overrides):
#   WORKDIR      required; the run directory (the same one resumes). Several
#                nodes need one they all share.
#   CONFIG       config file[:preset], default configs/pretrain.py.
#   PYTHON       the interpreter with lxmert_jax installed, default python.
#   NNODES       number of nodes, default 1.
#   NODE_RANK    this node's index, 0 to NNODES-1, default 0.
#   COORDINATOR  HOST:PORT of node 0, where it listens for the others;
#                required when NNODES > 1.
#   DRY_RUN      1 prints the command instead of running it, default 0.
# Several nodes pass --coordinator_address, --num_processes and --process_id
# to lxmert_jax.main: JAX reads no process count or id from the environment
# outside its cluster auto-detection (Cloud TPU, Slurm, Open MPI).
set -euo pipefail

readonly NAME=gpu_node.sh
readonly KNOWN=(WORKDIR CONFIG PYTHON NNODES NODE_RANK COORDINATOR DRY_RUN)

die() {
  echo "$NAME: $*" >&2
  exit 2
}

# The words of a command as a shell reads them back: plain words as they
# are, the others in single quotes, so a printed command can be pasted.
quote() {
  local word sq="'" safe='^[A-Za-z0-9_./:=,@%+-]+$' out=()
  for word in "$@"; do
    if [[ "$word" =~ $safe ]]; then out+=("$word"); else out+=("$sq${word//$sq/$sq\\$sq$sq}$sq"); fi
  done
  printf '%s' "${out[*]}"
}

# Runs the command in place of this shell, so that signals reach the trainer
# (it checkpoints on SIGTERM); with DRY_RUN=1 prints it instead.
launch() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(quote "$@")"
    exit 0
  fi
  exec "$@"
}

for name in "${KNOWN[@]}"; do
  printf -v "$name" '%s' "${!name:-}"
done
ARGS=()
for arg in "$@"; do
  if [[ "$arg" =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]]; then
    name="${BASH_REMATCH[1]}"
    [[ " ${KNOWN[*]} " == *" $name "* ]] || die "unknown variable $name (known: ${KNOWN[*]})"
    printf -v "$name" '%s' "${BASH_REMATCH[2]}"
  else
    ARGS+=("$arg")
  fi
done
CONFIG="${CONFIG:-configs/pretrain.py}"
PYTHON="${PYTHON:-python}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
DRY_RUN="${DRY_RUN:-0}"

# Every check comes before anything runs, so a mistake costs no node time.
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN must be 0 or 1, got '$DRY_RUN'"
[[ -n "$WORKDIR" ]] || die "WORKDIR is not set (the run directory, e.g. WORKDIR=runs/base)"
[[ -f "${CONFIG%%:*}" ]] || die "CONFIG=$CONFIG: no file ${CONFIG%%:*} (from $PWD)"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer, got '$NNODES'"
[[ "$NODE_RANK" =~ ^(0|[1-9][0-9]*)$ ]] && ((NODE_RANK < NNODES)) ||
  die "NODE_RANK must be in 0..$((NNODES - 1)) for NNODES=$NNODES, got '$NODE_RANK'"
if ((NNODES > 1)); then
  [[ -n "$COORDINATOR" ]] || die "COORDINATOR is not set: NNODES=$NNODES needs node 0's HOST:PORT"
  [[ "$COORDINATOR" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]+)$ ]] &&
    ((10#${BASH_REMATCH[2]} >= 1 && 10#${BASH_REMATCH[2]} <= 65535)) ||
    die "COORDINATOR must be HOST:PORT with a port in 1..65535, got '$COORDINATOR'"
fi

# XLA GPU flags for data/FSDP parallel transformer training: overlap
# collectives with compute (latency-hiding scheduler) and batch small
# all-gathers / reduce-scatters into larger ones.
xla_flags=(
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_triton_gemm=false
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864
)
cmd=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }${xla_flags[*]}"
  # Let XLA take most of the GPU memory up front instead of growing on demand.
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  "$PYTHON" -m lxmert_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
if ((NNODES > 1)); then
  cmd+=("--coordinator_address=$COORDINATOR" "--num_processes=$NNODES" "--process_id=$NODE_RANK")
fi
launch "${cmd[@]}" "${ARGS[@]}"
