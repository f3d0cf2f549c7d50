#!/usr/bin/env bash
# `vlm bench --sections peak,mfu,compile --presets small,base` on the lent GPU machine (issues 7 and 21), in one
# call of under 8 minutes.
#
# Here first: scripts/fetch_gpu_wheels.sh (fills the git-ignored .whl/). Then, through the device tool,
# from the repo root, carrying .whl:
#     run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
# On that machine it
#   1. stops (exit 2, one line) unless `python3 -c "import jax; print(jax.default_backend())"` is gpu;
#   2. pip-installs from .whl/ only (--no-index: it never reaches the network) the wheels whose package
#      the machine's Python lacks or has older, into a throwaway folder put on PYTHONPATH: the machine's
#      own Python stays as it was;
#   3. runs `python3 -m vlm_jax bench --sections peak,mfu,compile --presets small,base --out "${OUT:-bench_gpu}"`
#      under `timeout` (the compile section builds the tiny data set in ./data first, seconds),
#      logging to that folder (bench.log, plus machine.txt: GPU and package versions);
#   4. prints results.md. With $OUT set (the device tool sets it) the results are written straight into
#      it, so they come back.
#
#   PYTHON=python3            the machine's Python (the one with JAX's CUDA build)
#   DEVICE_CHECK_BUDGET=470   seconds for the whole script: the bench gets what is left, 450 s at most
#   DEVICE_CHECK_WHEELS=.whl  where the carried wheels are
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
BUDGET=${DEVICE_CHECK_BUDGET:-470}
WHEELS=${DEVICE_CHECK_WHEELS:-.whl}

# 1. The backend, before anything is installed or written; on failure one line and exit 2.
backend=$("$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -n1) \
  || backend="unknown (import jax failed)"
if [[ "$backend" != gpu ]]; then
  echo "device_check: JAX's default backend under $PYTHON is '$backend', not gpu: run this on the lent GPU machine" >&2
  exit 2
fi

step() { printf '== [%3d s] %s\n' "$SECONDS" "$*"; }
step "JAX backend: gpu ($PYTHON)"

out_dir=${OUT:-bench_gpu}
mkdir -p "$out_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/vlm_device_check.XXXXXX")
trap 'rm -rf "$work"' EXIT
site="$work/site"

step "machine"
{
  command -v nvidia-smi >/dev/null \
    && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, platform
import jax
print("python", platform.python_version(), "| jax devices:", jax.devices())
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "einops", "numpy", "protobuf", "etils"):
    try:
        print(f"  {name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
} 2>&1 | tee "$out_dir/machine.txt"

# 2. The carried wheels that are needed, into $site.
step "wheels from $WHEELS/ that this Python lacks or has older"
if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "device_check: no wheels in $WHEELS/: run scripts/fetch_gpu_wheels.sh on a machine with PyPI, and carry .whl" >&2
  exit 1
fi
"$PYTHON" - "$WHEELS" "$work/install.txt" <<'EOF'
import importlib.metadata as md, pathlib, sys
try:
    from packaging.version import Version
except ImportError:  # compare release numbers only
    def Version(text):
        return tuple(int(p) if p.isdigit() else 0 for p in text.split("+")[0].split("."))

chosen = []
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    try:
        install = have is None or Version(have) < Version(version)
    except Exception:  # a version string that does not parse: keep the machine's own
        install = False
    print(f"   {'install' if install else 'keep   '} {name}=={version}  (this Python: {have or 'none'})")
    if install:
        chosen.append(str(wheel))
pathlib.Path(sys.argv[2]).write_text("".join(f"{path}\n" for path in chosen))
EOF
mapfile -t wheels <"$work/install.txt"
if ((${#wheels[@]})); then
  step "pip install --no-index --no-deps --target $site (${#wheels[@]} wheels)"
  PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile \
    --no-cache-dir --disable-pip-version-check --target "$site" "${wheels[@]}"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

step "import vlm_jax.bench.runner and its sections"
if ! missing=$("$PYTHON" -c "import vlm_jax.bench.runner" 2>&1); then
  echo "$missing" | tail -n 5 >&2
  echo "device_check: vlm_jax.bench.runner does not import here: fetch the missing package in scripts/fetch_gpu_wheels.sh" >&2
  exit 1
fi
bench_help=$("$PYTHON" -m vlm_jax bench --help)
if [[ "$bench_help" != *--presets* ]]; then
  echo "device_check: this checkout's \`vlm bench\` has no --presets option yet" >&2
  exit 1
fi

# 3. The bench, in what is left of the budget.
limit=$((BUDGET - SECONDS))
((limit > 450)) && limit=450
if ((limit < 60)); then
  echo "device_check: only ${limit} s left of DEVICE_CHECK_BUDGET=${BUDGET} s for the bench" >&2
  exit 1
fi
bench_args=(--sections peak,mfu,compile --presets small,base --out "$out_dir")
step "python -m vlm_jax bench ${bench_args[*]} (timeout ${limit} s)"
set +e
timeout --kill-after=10 "$limit" "$PYTHON" -m vlm_jax bench "${bench_args[@]}" 2>&1 \
  | tee "$out_dir/bench.log"
status=${PIPESTATUS[0]}
set -e
if ((status == 124 || status == 137)); then
  step "the bench ran past ${limit} s and was stopped"
elif ((status != 0)); then
  step "the bench failed (exit $status)"
fi

# 4. The results.
if [[ -f "$out_dir/results.md" ]]; then
  step "$out_dir/results.md"
  cat "$out_dir/results.md"
else
  step "no $out_dir/results.md"
fi
if [[ -n "${OUT:-}" ]]; then
  step "in \$OUT (they come back): $(cd "$out_dir" && ls | tr '\n' ' ')"
fi
step "done in $SECONDS s"
exit "$status"
