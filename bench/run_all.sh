#!/usr/bin/env bash
# Run every benchmark at full size and keep each output under bench/results/ (NAME.md, NAME.json).
# Usage: bench/run_all.sh [python]   (about 40 minutes on a busy 2-core CPU; see bench/README.md)
set -euo pipefail
PY=${1:-python}
cd "$(dirname "$0")/.."
mkdir -p bench/results
run() {  # run NAME ARGS...: output to bench/results/NAME.md (stdout) and NAME.json
  local name=$1; shift
  echo "== $name $* ($(date -u +%H:%M:%S) UTC)" >&2
  "$PY" "bench/$name.py" "$@" --json "bench/results/$name.json" > "bench/results/$name.md"
}
run teacher_flops --repeats 5
run torch_reference --repeats 5
run train_step --repeats 7
run teacher_cache --repeats 2 --epochs 2 10
run fit_projections --repeats 3 --sizes 10000 37000 100000
# 1.6M rows (lelp only; sklearn would have to hold 2.5-4.9 GB): minutes per configuration.
"$PY" bench/fit_projections.py --sizes 1600000 --big-repeats 1 --json bench/results/fit_projections_1p6m.json \
  > bench/results/fit_projections_1p6m.md
echo "== done ($(date -u +%H:%M:%S) UTC)" >&2
