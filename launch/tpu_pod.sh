#!/usr/bin/env bash
# A Cloud TPU pod slice: copy the code to every worker, install, run on all workers at once.
# jax.distributed.initialize() needs no arguments there (TPU_WORKER_HOSTNAMES is set).
# Usage: bash launch/tpu_pod.sh TPU_NAME ZONE --config=configs/tokenizer.py:toy --config.mesh.preset=tpu_fsdp \
#          --workdir=gs://BUCKET/runs/x
set -euo pipefail
tpu="${1:?usage: tpu_pod.sh TPU_NAME ZONE ARGS}"; zone="${2:?zone}"; shift 2
cd "$(dirname "$0")/.."
archive="$(mktemp -d)/dreamer4-code.tgz"
tar czf "$archive" --exclude=.venv --exclude=runs --exclude=.git .
gcloud compute tpus tpu-vm scp "$archive" "$tpu":~/ --zone="$zone" --worker=all
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "mkdir -p dreamer4 && tar xzf dreamer4-code.tgz -C dreamer4 && cd dreamer4 && source launch/env.sh && \
   python -m uv pip install -q --python .venv/bin/python 'jax[tpu]==0.10.2' && python -m dreamer4.main $args"
