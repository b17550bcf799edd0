#!/usr/bin/env bash
# The README's set-up step: system packages (when run as root on Debian/Ubuntu), a virtual
# environment in .venv, and qcompile with its test extra. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(
  python3-venv python3-dev build-essential   # venv + compilers for any sdist
  ocl-icd-libopencl1 pocl-opencl-icd clinfo  # OpenCL on the CPU (PoCL): Intel-GPU artifact tests
  fonts-dejavu-core                          # text-line rendering for the PP-OCR accuracy check
)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
else
  echo "setup.sh: not root or no apt-get: install these yourself if missing: ${APT_PACKAGES[*]}" >&2
fi
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
python -c "import qcompile, tvm; print('qcompile', qcompile.__version__, 'on TVM', tvm.__version__)"
