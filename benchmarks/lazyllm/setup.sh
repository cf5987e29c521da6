#!/usr/bin/env bash
# Create benchmarks/lazyllm/.venv with LazyLLM 1.4.0 and only its base dependencies
# (fastapi, uvicorn, requests, cloudpickle, psutil, ...), which is all ServerModule needs
# to run locally with the default "empty" launcher. No extras (no torch, vllm, gradio, ...).
# Idempotent: a venv that already imports lazyllm 1.4.0 is left as it is.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
LAZYLLM_VERSION="1.4.0"

fail() { echo "benchmarks/lazyllm/setup.sh: $*" >&2; exit 1; }

have_lazyllm() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import lazyllm, sys; sys.exit(lazyllm.__version__ != '$LAZYLLM_VERSION')" >/dev/null 2>&1
}

if have_lazyllm; then
  exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "$PY not found"
"$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 13)))' ||
  fail "lazyllm $LAZYLLM_VERSION needs Python >=3.10,<3.13; $("$PY" --version 2>&1) found (set PYTHON=...)"

LOG="$(mktemp -t lazyllm-setup.XXXXXX.log)"
trap 'rm -f "$LOG"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" >"$LOG" 2>&1 || { cat "$LOG" >&2; fail "python -m venv $VENV failed"; }
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "lazyllm==$LAZYLLM_VERSION" \
  >"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; fail "pip install lazyllm==$LAZYLLM_VERSION failed (log above)"; }

have_lazyllm || fail "lazyllm $LAZYLLM_VERSION installed but 'import lazyllm' fails in $VENV"
"$VENV/bin/python" -c 'import fastapi, uvicorn, requests, cloudpickle, psutil' >/dev/null 2>&1 ||
  fail "ServerModule dependencies (fastapi, uvicorn, requests, cloudpickle, psutil) missing in $VENV"
