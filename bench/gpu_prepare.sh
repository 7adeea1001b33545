#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before bench/gpu_check.sh goes to a device machine.
# The device image has Python 3.12 with torch (CUDA), numpy, scipy, grpcio, protobuf, scikit-learn,
# scikit-image, matplotlib, torchmetrics, rich, typer, pyyaml, requests; it cannot fetch anything.
# This downloads the wheels fedsim needs beyond those (no dependencies pulled: every one is named)
# into .whl/ and copies Fashion-MNIST into .gpu-data/, both ignored by git; the device tool's
# `carry` takes them along (about 45 MiB of the 64 MiB a call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  "flwr==1.41.0" "cryptography" "cffi" "pycparser" "pycryptodome" "iterators" "tomli" "tomli-w"
  "grpcio-health-checking"
  "opacus==1.6.0" "opt-einsum" "dp-accounting==0.6.0" "dm-tree" "mnist1d==0.0.2.post1" "mlxtend==0.25.0"
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
rm -rf .whl && mkdir -p .whl
for w in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$w"
done
src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
rm -rf .gpu-data && mkdir -p .gpu-data/fashion-mnist
cp "$src"/*-ubyte.gz .gpu-data/fashion-mnist/
du -sh .whl .gpu-data
echo "next: the device tool's run with carry ['.whl', '.gpu-data'] and command 'bash bench/gpu_check.sh'"
