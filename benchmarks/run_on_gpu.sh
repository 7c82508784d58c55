#!/usr/bin/env bash
# Runs the LXMERT benchmark table on one GPU and keeps the results.
#
#   benchmarks/run_on_gpu.sh OUT_DIR [PART] [extra benchmarks.train_step flags]
#
# PART (default: all):
#   all     checks, ours (best levers), transformers eager and torch.compile,
#           the lever ladder, the max batch; about 8 minutes on an H100 once
#           compiled steps are cached, jobs past the time budget are skipped
#           and listed
#   table   checks, ours, transformers eager and torch.compile (train and
#           inference): the comparison itself
#   levers  our lever ladder and the max-batch search
# Running `table` and then `levers` splits a first, uncached run in two.
#
# Writes OUT_DIR/results-PART.json (everything measured), OUT_DIR/log-PART.txt
# (the full output, ending with the markdown tables) and
# OUT_DIR/environment.txt (nvidia-smi and JAX's environment report).
#
# Installs nothing: the Python given by $PYTHON (default python3) needs jax
# with CUDA, flax, optax, orbax-checkpoint, chex, torch and transformers. If
# $WHEELS names a folder of wheels, they are installed into a scratch
# directory first (no index, no dependencies) and put on PYTHONPATH.
# Compiled programs are cached under $BENCH_CACHE (default
# /tmp/lxmert_jax_bench_cache), so a second run skips most compilation.
set -euo pipefail

out=${1:?usage: $0 OUT_DIR [all|table|levers] [flags]}
shift
part=${1:-all}
case "$part" in
  all|table|levers) [[ $# -gt 0 ]] && shift ;;
  -*) part=all ;;
  *) echo "unknown part '$part': expected all, table or levers" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
py=${PYTHON:-python3}
cache=${BENCH_CACHE:-/tmp/lxmert_jax_bench_cache}

if [[ -n "${WHEELS:-}" ]]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$cache/site" \
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

case "$part" in
  all) flags=(--ladder --max-batch --time-budget "${TIME_BUDGET:-450}") ;;
  table) flags=(--time-budget "${TIME_BUDGET:-540}") ;;
  levers) flags=(--sides ours --no-infer --no-check --ladder --max-batch
                 --time-budget "${TIME_BUDGET:-540}") ;;
esac

"$py" -m benchmarks.train_step "${flags[@]}" --out "$out/results-$part.json" "$@" \
  2>&1 | tee "$out/log-$part.txt"
