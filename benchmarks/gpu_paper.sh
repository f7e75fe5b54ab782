#!/usr/bin/env bash
# The paper-size checks for one GPU (never part of CI): train steps of the paper tokenizer and
# dynamics model at the largest shapes that fit, then KV-cached generation at the paper's shape.
#   OUT=results_dir bash benchmarks/gpu_paper.sh
# Each (phase, window, batch) runs in its own process so its allocator peak is its own; a shape
# that does not fit prints a line with "fits": false. JSON lines go to $OUT/paper_step.jsonl and
# $OUT/generation_paper.jsonl.
set -u
OUT="${OUT:-benchmarks/results}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.97}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"
step() {  # phase window batch seconds
  echo "== $1 T=$2 B=$3"
  timeout "$4" $PY -m benchmarks.paper_step --phase="$1" --variant=paper --windows="$2" --batches="$3" \
    --steps=3 --warmup=1 --out="$OUT/paper_step.jsonl" 2>&1 | grep -v "Warning\|libtpu" | tail -3
}
step dynamics 64 1 100
step dynamics 256 1 130
step dynamics 64 4 100
step tokenizer 16 1 120
step tokenizer 16 4 120
echo "== generation at the paper's dynamics shape"
timeout 100 $PY -m benchmarks.generation --variant=paper --contexts=8,64,128 --batches=1,8 --modes=cached --k=4 \
  --frames=5 --out="$OUT/generation_paper.jsonl" 2>&1 | grep -v "Warning\|libtpu" | tail -12
