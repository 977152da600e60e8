#!/usr/bin/env bash
# The GPU run: every engine proven and measured on CUDA in one command, for a lent GPU machine with no network.
#
#   bench/gpu.sh OUT_DIR                  # on the GPU machine, from the repository root (under 8 minutes)
#   bench/gpu.sh --cpu OUT_DIR            # the same run on a CPU, small sizes (under 3 minutes; CI and tests)
#   bench/gpu.sh --cpu --image-guard OUT  # ... importing only what the GPU image + the bundle hold
#
# The GPU machine needs `make gpu-bundle`'s folder (GPU_BUNDLE, default var/gpu-bundle) copied beside the
# checkout: its wheels go into a private target folder on PYTHONPATH (the image's torch is never touched).
# OUT_DIR receives results.json (everything measured), table.md (the readable table), cuda-tests*.xml, run.log.
set -uo pipefail
cd "$(dirname "$0")/.."

profile=gpu
guard=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) profile=cpu; shift ;;
        --image-guard) guard=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
out=${1:?usage: bench/gpu.sh [--cpu] [--image-guard] OUT_DIR [bench.gpu.run options, e.g. --time-scale 3]}
shift
mkdir -p "$out"
bundle=${GPU_BUNDLE:-var/gpu-bundle}

if [ "$profile" = gpu ]; then
    py=${PYTHON:-python3}
    echo "bench/gpu.sh: GPU run on $(hostname): $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found'); results in $out"
    site=${GPU_SITE:-${TMPDIR:-/tmp}/talking-head-site}
    if ! ls "$bundle"/wheels/*.whl >/dev/null 2>&1; then
        echo "bench/gpu.sh: no wheels in $bundle/wheels: run 'make gpu-bundle' where pip works and copy $bundle here" >&2
        exit 2
    fi
    rm -rf "$site"
    started=$(date +%s)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$site" "$bundle"/wheels/*.whl || exit 3
    echo "bundle: $(ls "$bundle"/wheels | wc -l) wheels installed into $site in $(( $(date +%s) - started )) s"
    export PYTHONPATH="$PWD:$site"
else
    py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    echo "bench/gpu.sh --cpu: CPU run (small sizes) on $(hostname): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg); no bundle installed (this Python's packages); results in $out"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$guard" = 1 ]; then
    export PYTHONPATH="$PWD/bench/gpu/guard:$PYTHONPATH" GPU_IMAGE_GUARD=1
    echo "imports limited to the GPU image's packages and the bundle's (bench/gpu/guard)"
fi
nvidia-smi 2>/dev/null | head -15
exec "$py" -m bench.gpu.run "$out" --profile "$profile" --bundle "$bundle" "$@"
