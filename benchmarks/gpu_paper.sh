#!/usr/bin/env bash
# Train-step checks for one GPU (never part of CI), one set of rows per config variant:
#   OUT=results_dir bash benchmarks/gpu_paper.sh                 # paper: the paper tokenizer and
#       dynamics model at the largest shapes that fit, then KV-cached generation at the paper's shape
#   OUT=results_dir bash benchmarks/gpu_paper.sh craftax_large   # the craftax_large tokenizer and
#       dynamics steps that those variants' step counts are set from (configs/*.py:craftax_large)
# Each (phase, window, batch) runs in its own process so its allocator peak is its own; a shape
# that does not fit prints a line with "fits": false. JSON lines go to $OUT/paper_step.jsonl and
# $OUT/generation_paper.jsonl (paper), or $OUT/craftax_large_step.jsonl.
set -u
VARIANT="${1:-paper}"
case "$VARIANT" in
  paper | craftax_large) ;;
  *) echo "benchmarks/gpu_paper.sh: unknown variant '$VARIANT'; choose paper or craftax_large" >&2; exit 2 ;;
esac
OUT="${OUT:-benchmarks/results}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.97}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"
step() {  # phase window batch seconds [jsonl name]
  echo "== $1 T=$2 B=$3"
  timeout "$4" $PY -m benchmarks.paper_step --phase="$1" --variant="$VARIANT" --windows="$2" --batches="$3" \
    --steps="$steps" --warmup="$warmup" --out="$OUT/${5:-paper_step.jsonl}" 2>&1 | grep -v "Warning\|libtpu" | tail -3
}
case "$VARIANT" in
  paper)
    steps=3 warmup=1  # timed and untimed steps per row
    step dynamics 64 1 100
    step dynamics 256 1 130
    step dynamics 64 4 100
    step tokenizer 16 1 120
    step tokenizer 16 4 120
    echo "== generation at the paper's dynamics shape"
    timeout 100 $PY -m benchmarks.generation --variant=paper --contexts=8,64,128 --batches=1,8 --modes=cached --k=4 \
      --frames=5 --out="$OUT/generation_paper.jsonl" 2>&1 | grep -v "Warning\|libtpu" | tail -12
    ;;
  craftax_large)
    steps=5 warmup=2  # timed and untimed steps per row (short steps: more of them)
    step tokenizer 8 32 240 craftax_large_step.jsonl  # the variant's batch and window (start-up and compile: about 80 s)
    step dynamics 32 32 150 craftax_large_step.jsonl  # short windows (T1), the variant's batch
    step dynamics 96 32 150 craftax_large_step.jsonl  # long windows (T2)
    step dynamics 32 64 150 craftax_large_step.jsonl  # twice the batch
    ;;
esac
