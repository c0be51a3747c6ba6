#!/usr/bin/env bash
# On the GPU machine, no network needed: bash gpu-kit/run.sh OUT_DIR [MINUTES]
# Installs the kit's wheels (no index), then checks the kernels, runs the CUDA tests, benchmarks and
# compares the three families, all within MINUTES (default 9), leaving its results in OUT_DIR even
# when stopped (see kit/run.py). Run again on the same machine, it continues. PYTHON picks the
# interpreter (default python3: the one that has torch).
set -u
started=$(date +%s)
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$kit")
out=${1:?usage: bash gpu-kit/run.sh OUT_DIR [MINUTES]}
minutes=${2:-9}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/run.log") 2>&1

site="$kit/site"
if [ ! -f "$site/.installed" ]; then
    echo "installing $(ls "$kit"/wheels/*.whl | wc -l) wheels into $site (no index)"
    rm -rf "$site"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$site" "$kit"/wheels/*.whl || { echo "error: the kit's wheels did not install"; exit 1; }
    touch "$site/.installed"
fi
# the kit's packages first (a newer version than the machine's wins), then the checkout's own
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$root" || exit 1
# the runner takes this process's place: a SIGTERM to it stops the step running and packs the results
exec "$python" -m kit.run "$out" --minutes "$minutes" --started "$started" --kit "$kit"
