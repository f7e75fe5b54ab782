#!/usr/bin/env bash
# Makes .venv (Python 3.11) hold exactly the pinned dependencies of pyproject.toml.
# Quick when nothing changed: a stamp named after pyproject.toml's hash skips the install.
# Usage: source launch/env.sh   (or bash launch/env.sh)
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
_stamp="$_root/.venv/.installed-$(sha256sum "$_root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$_stamp" ]; then
  echo "[env] installing the pinned dependencies into .venv (first run: a few minutes)" >&2
  if [ ! -x "$_root/.venv/bin/python" ]; then
    "$_py" -m venv "$_root/.venv"
  fi
  "$_root/.venv/bin/python" -m ensurepip >/dev/null 2>&1 || true
  "$_root/.venv/bin/python" -m pip install -q --disable-pip-version-check uv
  "$_root/.venv/bin/python" -m uv pip install -q --python "$_root/.venv/bin/python" \
    -r "$_root/pyproject.toml" --extra test
  rm -f "$_root"/.venv/.installed-*
  touch "$_stamp"
fi
export PATH="$_root/.venv/bin:$PATH"
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
