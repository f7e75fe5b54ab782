#!/usr/bin/env bash
# The main job on the embedded toy world: collect data, then train every phase in order.
# Re-running resumes; finished stages are skipped. Extra flags go to dreamer4.main.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
exec python -m dreamer4.main --config=configs/pipeline.py:toy --workdir="${WORKDIR:-runs/toy}" "$@"
