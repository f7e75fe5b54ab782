#!/usr/bin/env bash
# The test suite (CPU; 8 fake devices). Installs what it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
exec python -m pytest tests -q -ra "$@"
