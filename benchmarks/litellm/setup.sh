#!/usr/bin/env bash
# Create benchmarks/litellm/.venv with LiteLLM's proxy (PyPI `litellm[proxy]`), for
# benchmarks/bench_edge.py's comparison on loopback. Its own virtualenv: the proxy pins
# its web stack, which must not move the project's. Idempotent.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"

have_litellm() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null 2>&1
}

if have_litellm; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  "litellm[proxy]==$LITELLM_VERSION" || {
  echo "benchmarks/litellm/setup.sh: pip install litellm[proxy]==$LITELLM_VERSION failed" >&2
  exit 1
}
have_litellm || { echo "benchmarks/litellm/setup.sh: litellm's proxy does not import" >&2; exit 1; }
