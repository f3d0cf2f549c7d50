#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels that the lent GPU machine's Python lacks for
# `python -m vlm_jax bench --sections peak,mfu` (issue 7). Run it HERE, where pip reaches PyPI; the
# GPU machine has no network. scripts/device_check.sh installs these wheels there into a throwaway
# folder (never into the machine's own Python), so carry `.whl` along with the working tree.
#
# The GPU image (docs: /work/.library/device/KINDS.md) has python3 3.12 with JAX (CUDA), flax, optax,
# orbax-checkpoint, chex, einops, torch, transformers, absl-py, etils, cloudpickle, protobuf, psutil,
# pyarrow, ... but not the packages below, which `import vlm_jax.bench.runner` (config -> ml_collections,
# data.builders -> tensorflow_datasets, data.pipeline -> grain, data.video_io -> av) and their own
# imports need. Versions are exactly those installed in our .venv (itself installed from setup.py's
# pins), so the GPU run imports what the tests here ran against.
#
#   PYTHON=.venv/bin/python        where the versions are read from
#   GPU_PYTHON_VERSION=3.12        the GPU machine's Python (python3 there is 3.12.3)
#   DEST=.whl                      where the wheels go (emptied of *.whl first: two versions of one
#                                  package would stop the install there)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
GPU_PYTHON_VERSION=${GPU_PYTHON_VERSION:-3.12}
DEST=${DEST:-.whl}

# Missing on the GPU machine; the import chain that needs each:
MISSING=(
  grain                      # vlm_jax.data.pipeline
  array-record               # grain.sources, tensorflow_datasets' ArrayRecord files
  portpicker                 # grain.experimental (process prefetch)
  ml-collections             # vlm_jax.config and every config
  tensorflow-datasets        # vlm_jax.data.builders
  tensorflow-metadata        # tensorflow_datasets.core.proto
  googleapis-common-protos   # tensorflow_metadata's protos
  immutabledict              # tensorflow_datasets.core.utils
  promise                    # tensorflow_datasets.core.download (sdist only on PyPI: built here, pure Python)
  toml                       # tensorflow_datasets.core.community
  termcolor                  # tensorflow_datasets, when it builds a data set
  dm-tree                    # tensorflow_datasets, when it builds a data set
  importlib-resources        # tensorflow_datasets without TensorFlow (setup.py)
  av                         # vlm_jax.data.video_io (module level in vlm_jax.data.pipeline); ~36 MB
  tensorboardX               # vlm_jax.run.loop's summary writer
)
# On the GPU machine already, but maybe older than our protos / grain need (protobuf: the generated
# code in googleapis-common-protos wants runtime >= 6.33.5). device_check.sh installs these only
# where the machine's own copy is missing or older.
NEWER_IF_NEEDED=(protobuf etils)

PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done

echo "== versions from $PYTHON; wheels for CPython $GPU_PYTHON_VERSION x86_64 into $DEST/"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for name in "${MISSING[@]}" "${NEWER_IF_NEEDED[@]}"; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "fetch_gpu_wheels: $name is not installed in $PYTHON's environment (scripts/setup_env.sh installs it)" >&2
    exit 1
  }
  echo "== $name==$version"
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
         --python-version "$GPU_PYTHON_VERSION" "${platform_args[@]}" -d "$DEST" "$name==$version" \
         2>"$tmp/download.err"; then
    # No wheel on PyPI (promise ships an sdist only): build one here, and keep it only if it is
    # pure Python, so that it installs on any Python and platform.
    echo "   no wheel on the index for CPython $GPU_PYTHON_VERSION: building one from the sdist"
    rm -rf "$tmp/build" && mkdir "$tmp/build"
    if ! "$PYTHON" -m pip wheel -q --no-deps -w "$tmp/build" "$name==$version" 2>"$tmp/build.err"; then
      grep -hv "is ignored: it is neither a file nor a directory" "$tmp/download.err" "$tmp/build.err" >&2 || true
      echo "fetch_gpu_wheels: could not get a wheel of $name==$version (see above)" >&2
      exit 1
    fi
    built=("$tmp"/build/*.whl)
    if [[ ${#built[@]} -ne 1 || "${built[0]}" != *-none-any.whl ]]; then
      echo "fetch_gpu_wheels: $name==$version has no wheel for CPython $GPU_PYTHON_VERSION on x86_64, and its" \
           "sdist builds no pure-Python wheel (${built[*]##*/})" >&2
      exit 1
    fi
    mv "${built[0]}" "$DEST/"
  fi
done

echo "== fetched into $DEST/:"
(cd "$DEST" && ls -1 ./*.whl | sed 's|^\./|   |')
total=$(du -cb "$DEST"/*.whl | tail -n1 | cut -f1)
echo "== $(ls -1 "$DEST"/*.whl | wc -l) wheels, $total bytes ($(awk -v b="$total" 'BEGIN {printf "%.1f", b / 1048576}') MiB);" \
     "the device tool carries at most 64 MiB with the working tree"
