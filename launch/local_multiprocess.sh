#!/usr/bin/env bash
# N CPU processes on loopback (gloo collectives), each with its own fake devices: the
# multi-host code path on one machine.
# Usage: bash launch/local_multiprocess.sh N [DEVICES_PER_PROCESS] -- --config=... --workdir=...
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
n="${1:?usage: local_multiprocess.sh N [DEVICES_PER_PROCESS] -- ARGS}"; shift
per=1
if [ "${1:-}" != "--" ] && [ -n "${1:-}" ]; then per="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu python -m dreamer4.main "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" --cpu_devices="$per" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit "$status"
