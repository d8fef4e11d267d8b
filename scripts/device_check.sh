#!/usr/bin/env bash
# The accelerator check in one command: devices and versions, the accelerator tests, a bfloat16
# `lelp run` on digits, the benchmarks at accelerator sizes. One JSON + one Markdown file per part
# and a summary in OUT; at most 8 minutes (each part has its own limit); no network.
#
#   scripts/device_check.sh OUT [--wheels DIR] [--dry-run]
#
#   --wheels DIR  install the wheels in DIR (scripts/fetch_device_wheels.sh) into a private folder
#                 first: pip --no-index --no-deps, so the machine's own jax/jaxlib/flax/torch stay.
#   --dry-run     every part at tiny sizes on the CPU (JAX_PLATFORMS=cpu): what CI runs.
#   PYTHON=...    the interpreter (default python3: on the lent GPU machine, the one with jax and torch).
#
# lelp_jax itself is used from this checkout (PYTHONPATH; no build, no index): the equivalent of
# `pip install --no-index --no-deps -e .`, and `lelp` is `python -m lelp_jax.cli`.
# docs/LAUNCHING.md ("Checking an accelerator") says how to run it on a lent machine.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="" WHEELS="" DRY=()
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run); shift ;;
    --wheels) [ $# -ge 2 ] || { echo "device_check: --wheels needs a folder" >&2; exit 2; }; WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#--wheels=}"; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "device_check: unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "device_check: one results folder only (got $OUT and $1)" >&2; exit 2; }; OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "device_check: give the results folder: scripts/device_check.sh OUT" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"

if [ -n "$WHEELS" ]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  [ ${#wheels[@]} -gt 0 ] || { echo "device_check: no .whl files in $WHEELS" >&2; exit 2; }
  for w in "${wheels[@]}"; do
    case "$(basename "$w")" in
      jax-*|jaxlib-*|jax_cuda*|jax_plugins*|flax-*|torch-*|numpy-*)
        echo "device_check: $w would replace the machine's own $(basename "$w" | cut -d- -f1); remove it" >&2; exit 2 ;;
    esac
  done
  SITE="$(mktemp -d)/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" \
    || { echo "device_check: installing the wheels of $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "device_check: ${#wheels[@]} wheels from $WHEELS -> $SITE"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" && exec "$PY" "$ROOT/scripts/device_check.py" "$OUT" "${DRY[@]}"
