#!/usr/bin/env bash
# The test suite (CPU; 8 fake devices). Installs what it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
# tests/test_play.py drives the play page in a real headless browser (Debian's chromium + chromedriver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "[test] installing chromium and chromium-driver (apt) for tests/test_play.py" >&2
  _sudo=""; [ "$(id -u)" -eq 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq chromium chromium-driver >/dev/null || \
    echo "[test] could not install chromium; tests/test_play.py will fail and say so" >&2
fi
# Format and lint first (settings in pyproject.toml); to fix: ruff format . && ruff check --fix .
python -m ruff format --check --quiet . || { echo "[test] ruff format: files above need formatting (ruff format .)" >&2; exit 1; }
python -m ruff check --quiet . || { echo "[test] ruff check: fix the findings above (many: ruff check --fix .)" >&2; exit 1; }
# One worker per core, at most 4 (each holds 8 fake devices and its own session fixtures); each
# file runs whole on one worker, the long ones first (tests/conftest.py). TEST_WORKERS=0 runs in
# this process alone.
_workers="${TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
exec python -m pytest tests -q -ra -n "$_workers" --dist loadfile --no-loadscope-reorder "$@"
