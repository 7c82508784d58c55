#!/usr/bin/env bash
# Runs the LXMERT benchmark table on one GPU and keeps the results.
#
#   benchmarks/run_on_gpu.sh OUT_DIR [PART] [extra benchmarks.train_step flags]
#
# PART (default: all):
#   table      checks, then ours (best levers), transformers eager and
#              torch.compile, train and inference: the comparison itself
#   levers     ours once per lever, added one at a time from the plain model
#   max-batch  the largest batch our train step fits
#   all        the three above in one run; what the time budget leaves out
#              is listed as not measured
#   data       the input pipeline on this host's cores: batch assembly per
#              core and with $DATA_WORKERS (default 8) grain worker processes
#              (benchmarks/data_throughput.py; needs the package's own
#              dependencies: grain, tensorflow-datasets, array-record, ...)
# Each part is sized for one call of at most 10 minutes on an H100 when
# nothing is compiled yet; compiled programs are cached under $BENCH_CACHE
# (default /tmp/lxmert_jax_bench_cache), so later parts and reruns on the same
# machine skip most compilation.
#
# Writes OUT_DIR/results-PART.json (everything measured), OUT_DIR/log-PART.txt
# (the full output, ending with the markdown tables) and
# OUT_DIR/environment.txt (nvidia-smi and JAX's environment report).
#
# Installs nothing: the Python given by $PYTHON (default python3) needs jax
# with CUDA, flax, optax, orbax-checkpoint, chex, torch, transformers and
# ml-collections (the timed step is the trainer's, built from
# configs/pretrain.py; no data library is imported for the GPU parts). If
# $WHEELS names a folder of wheels, they are installed into the cache folder
# first (no index, no dependencies) and put on PYTHONPATH.
set -euo pipefail

out=${1:?usage: $0 OUT_DIR [table|levers|max-batch|all] [flags]}
shift
part=all
if [[ $# -gt 0 && $1 != -* ]]; then
  part=$1
  shift
fi
case "$part" in
  table) flags=() ;;
  levers) flags=(--sides ours --no-infer --no-check --ladder) ;;
  max-batch) flags=(--sides none --no-check --max-batch) ;;
  all) flags=(--ladder --max-batch) ;;
  data) flags=() ;;
  *) echo "unknown part '$part': expected table, levers, max-batch, all or data" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
py=${PYTHON:-python3}
cache=${BENCH_CACHE:-/tmp/lxmert_jax_bench_cache}

if [[ -n "${WHEELS:-}" ]]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$cache/site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$cache/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$cache/jax}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$cache/inductor}

{
  nvidia-smi || true
  XLA_PYTHON_CLIENT_PREALLOCATE=false "$py" -c \
    "import jax; jax.print_environment_info()" || true
} > "$out/environment.txt" 2>&1

if [[ $part == data ]]; then
  "$py" benchmarks/data_throughput.py --workers "${DATA_WORKERS:-8}" --batch-size 256 \
    --data-dir "$cache/data" "$@" 2>&1 | tee "$out/log-data.txt"
  exit "${PIPESTATUS[0]}"
fi
"$py" -m benchmarks.train_step "${flags[@]}" --time-budget "${TIME_BUDGET:-520}" \
  --out "$out/results-$part.json" "$@" 2>&1 | tee "$out/log-$part.txt"
