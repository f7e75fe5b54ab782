#!/usr/bin/env bash
# The craftax_large variants' train steps on one GPU (never part of CI): the step times the
# tokenizer's and dynamics model's step counts are set from (configs/*.py:craftax_large).
#   OUT=results_dir bash benchmarks/gpu_craftax_large.sh
# Each (phase, window, batch) runs in its own process so its allocator peak is its own; a shape
# that does not fit prints a line with "fits": false. JSON lines go to $OUT/craftax_large_step.jsonl.
set -u
OUT="${OUT:-benchmarks/results}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.97}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"
step() {  # phase window batch seconds
  echo "== $1 T=$2 B=$3"
  timeout "$4" $PY -m benchmarks.paper_step --phase="$1" --variant=craftax_large --windows="$2" --batches="$3" \
    --steps=5 --warmup=2 --out="$OUT/craftax_large_step.jsonl" 2>&1 | grep -v "Warning\|libtpu" | tail -2 | cut -c1-400
}
step tokenizer 8 32 240    # the variant's batch and window (start-up, LPIPS init and compile: about 80 s)
step dynamics 32 32 150    # short windows (T1), the variant's batch
step dynamics 96 32 150    # long windows (T2)
step dynamics 32 64 150    # twice the batch
