#!/usr/bin/env bash
# Accelerator benchmark (issue 24 item 3), under 8 minutes on one GPU: SevenNet-0 energy, forces
# and stress over batch sizes with peak device memory; relaxation of 1,000 perov_5 structures;
# generative training steps and samples per second; one search generation. One JSON file, in
# $OUT when it is set, else benchmarks/results/gpu/ (benchmarks/bench_gpu.py does the work).
#
#   benchmarks/gpu.sh [--smoke] [bench_gpu.py options]   run; --smoke: tiny, on a CPU, in about a minute
#   benchmarks/gpu.sh prepare [DIR]                      where PyPI is reachable: fill DIR (.gpucarry/)
#
# A bare device machine has no network, so what it needs travels with the checkout in .gpucarry/
# (ignored by git: `prepare` adds it to .git/info/exclude; name it in the device tool's carry):
#   data/perov_5/val.csv        the relaxation and generative data (shared/data is used first if present)
#   jaxinv-cache/sevennet/*.npz SevenNet-0 converted for jaxinv (3.4 MB), and beside it the sevenn 0.13.0
#   jaxinv-cache/sevenn-0.13.0/ checkpoint (9.8 MB), converted again if the .npz was made by other versions
#   wheels/*.whl                the packages the device image lacks (pymatgen, ase, pyxtal, e3nn-jax, ...)
# A sevenn-0.13.0 wheel dropped into .gpucarry/ or .gpucarry/wheels/ works too (the checkpoint is taken
# out of it). Where the weights come from is printed before the run and recorded in the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
carry="${JAXINV_GPU_CARRY:-$root/.gpucarry}"
export JAXINV_GPU_CARRY="$carry"
python="${PYTHON:-python3}"
export OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
# JAX allocates as it goes instead of taking 75% of the GPU up front, so that peak_bytes_in_use
# is what the programs needed and the relaxation queue sizes its batches from real free memory
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# compile times are measured cold: no persistent XLA cache unless the caller asks for one
export JAXINV_XLA_CACHE="${JAXINV_XLA_CACHE:-off}"

if [[ "${1:-}" == prepare ]]; then
  dest="${2:-$carry}"
  if [[ "$dest" == "$root/.gpucarry" && -d .git/info ]] && ! git check-ignore -q .gpucarry 2>/dev/null; then
    echo "/.gpucarry/" >>.git/info/exclude  # never committed; the device tool's carry takes it along
  fi
  exec "$python" benchmarks/bench_gpu.py --prepare "$dest"
fi

# ---- data: perov_5/val.csv
if [[ -z "${JAXINV_DATA:-}" ]]; then
  for d in "$root/shared/data" "$root/../shared/data" "$carry/data"; do
    if [[ -f "$d/perov_5/val.csv" ]]; then
      JAXINV_DATA="$(cd "$d" && pwd)"
      export JAXINV_DATA
      break
    fi
  done
fi
if [[ -z "${JAXINV_DATA:-}" || ! -f "$JAXINV_DATA/perov_5/val.csv" ]]; then
  echo "gpu.sh: perov_5/val.csv not found (JAXINV_DATA, shared/data, ../shared/data, $carry/data);" \
       "run 'benchmarks/gpu.sh prepare' where the data is and carry .gpucarry/" >&2
  exit 2
fi
# ---- weights: the jaxinv cache that prepare filled, unless the caller chose one
if [[ -z "${JAXINV_CACHE:-}" && -d "$carry/jaxinv-cache" ]]; then
  export JAXINV_CACHE="$carry/jaxinv-cache"
fi

# ---- install: only what does not import yet, and never jax (a GPU machine's jax has its CUDA plugin,
# and jaxinv's pin, jax==0.10.1, would replace it with a CPU build)
missing() {  # the packages among the benchmark's imports that are not installed (looked up, not imported)
  (cd / && "$python" - "$@" <<'EOF'
import importlib.util, sys
for name in sys.argv[1:]:
    if importlib.util.find_spec(name) is None:
        print(name)
EOF
  )
}
deps=(flax optax orbax e3nn_jax pymatgen ase pyxtal spglib monty ruamel orjson)
absent=" $(missing jax "${deps[@]}" jaxinv | tr '\n' ' ')"
if [[ "$absent" == *" jax "* ]]; then
  "$python" -m pip install -q .  # a machine without jax: the pinned install, with its dependencies
else
  others="${absent/ jaxinv / }"
  if [[ -n "${others// /}" ]]; then
    if ! compgen -G "$carry/wheels/*.whl" >/dev/null; then
      echo "gpu.sh: missing${others}and no wheels in $carry/wheels;" \
           "run 'benchmarks/gpu.sh prepare' where PyPI is reachable" >&2
      exit 2
    fi
    "$python" -m pip install -q --no-index --no-deps "$carry"/wheels/*.whl
  fi
  if [[ "$absent" == *" jaxinv "* ]]; then
    # from the local tree, offline (setuptools is already there), without touching the dependencies
    "$python" -m pip install -q --no-deps --no-build-isolation --no-index . \
      || { echo "gpu.sh: pip could not install the checkout; using it in place" >&2; export PYTHONPATH="$root"; }
  fi
fi
echo "gpu.sh: data $JAXINV_DATA; jaxinv cache ${JAXINV_CACHE:-~/.cache/jaxinv}"
if [[ " $* " != *" --smoke "* ]]; then  # the full run needs SevenNet-0: say now where it comes from
  "$python" benchmarks/bench_gpu.py --where || exit 2
fi

exec "$python" benchmarks/bench_gpu.py "$@"
