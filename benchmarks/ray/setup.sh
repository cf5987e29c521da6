#!/usr/bin/env bash
# Create benchmarks/ray/.venv with Ray Serve (PyPI `ray[serve]`), for benchmarks/bench_load.py's
# third side. Its own virtualenv: Ray pins its own grpcio, protobuf and web stack, which must
# not move the project's. Idempotent: a venv that already imports ray.serve is left as it is.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"

have_ray() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ray, ray.serve" >/dev/null 2>&1
}

if have_ray; then
  exit 0
fi
LOG="$(mktemp -t ray-setup.XXXXXX.log)"
trap 'rm -f "$LOG"' EXIT
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  "ray[serve]==$RAY_VERSION" psutil >"$LOG" 2>&1 || {
  tail -n 40 "$LOG" >&2
  echo "benchmarks/ray/setup.sh: pip install ray[serve]==$RAY_VERSION failed (log above)" >&2
  exit 1
}
have_ray || { echo "benchmarks/ray/setup.sh: ray.serve does not import" >&2; exit 1; }
