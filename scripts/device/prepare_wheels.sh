#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks (it has torch, transformers, numpy, onnx, pytest...,
# see the device tool's KINDS.md) into .whl/ for `carry`: CPython 3.12, manylinux x86-64, the same
# versions as this checkout's .venv. Ray's wheel is slimmed to fit the 64 MiB a call may carry.
#
#   bash scripts/device/prepare_wheels.sh        # then: run(command="bash scripts/device/gpu_bench.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_PY=${VENV_PY:-.venv/bin/python}
PACKAGES=(ray pydantic pydantic_core annotated-types typing-inspection omegaconf crypten
          jsonschema jsonschema-specifications referencing rpds-py typing-extensions setuptools)

pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
python3 scripts/device/slim_wheel.py .whl/ray-*.whl ray/jars/ ray/dashboard/client/
du -ch .whl/*.whl | tail -1
