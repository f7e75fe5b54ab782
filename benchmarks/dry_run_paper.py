r"""The paper configs' `--dry_run` on fake CPU devices: analytic memory plan against the compiler.

  python -m benchmarks.dry_run_paper [--case=dynamics:8 --case=tokenizer:8 ...] [--timeout=1800] \
      [--out=benchmarks/results/cpu_dry_run_paper.jsonl]

Each case is PHASE:DEVICES[:OVERRIDE+OVERRIDE...] (overrides are `--config.` flags without the
prefix, e.g. `dynamics:8:model.remat_policy=inputs` or `dynamics:8:model.dtype=float32`). It runs
`python -m dreamer4.main --dry_run --config=configs/PHASE.py:paper --cpu_devices=DEVICES
--config.train.batch_size=DEVICES` in a subprocess (one window per device, the paper's FSDP mesh)
and prints one JSON line per compiled step: the config, devices, window T, remat policy, compute
dtype, the analytic peak (dreamer4/memory_plan.py; "traced" on CPU) and the "fused" one, the
compiled peak, their ratio, parameters and train state per device, compile seconds, and whether
each peak fits an 80 GB (74.5 GiB) H100. A case whose subprocess runs past --timeout seconds is
reported as skipped. Run one case at a time on a shared machine: a paper compile takes minutes
and several GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
H100_BYTES = 80e9  # "80 GB": 74.5 GiB


def run_case(case: str, timeout: float) -> list[dict]:
  """The rows of one case (see the module doc); one row with `skipped` when it did not finish."""
  phase, devices, *rest = case.split(":")
  overrides = [f"--config.{o}" for o in (rest[0].split("+") if rest and rest[0] else [])]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "report.json")
    cmd = [
      sys.executable,
      "-m",
      "dreamer4.main",
      "--dry_run",
      f"--config=configs/{phase}.py:paper",
      f"--cpu_devices={devices}",
      f"--config.train.batch_size={devices}",
      *overrides,
      f"--dry_run_output={out}",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    t0 = time.time()
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      return [dict(case=case, skipped=f"did not finish in {timeout:.0f} s")]
    if proc.returncode:
      return [dict(case=case, skipped=f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")]
    with open(out) as f:
      r = json.load(f)
  rows = []
  for kind, s in r["steps"].items():
    a, m = s["analytic"], s["memory_per_device"]
    rows.append(
      dict(
        config=f"{phase}.py:paper",
        overrides=overrides,
        devices=r["devices"],
        mesh=r["mesh"],
        step=kind,
        T=s["window"],
        remat_policy=a["policy"],
        compute_dtype=r["compute_dtype"],
        keeps=a["keeps"],
        analytic_peak_gib=round(a["peak"] / GIB, 3),
        analytic_fused_peak_gib=round(a["other"]["fused"] / GIB, 3) if "fused" in a["other"] else None,
        analytic_per_layer_bound_gib=round(a["peak_per_layer"] / GIB, 3) if a.get("peak_per_layer") else None,
        compiled_peak_gib=round(m["peak"] / GIB, 3),
        ratio=round(a["peak"] / m["peak"], 3),
        analytic_by_policy_gib={k: round(v / GIB, 2) for k, v in a["peak_by_policy"].items()},
        params_per_device=r["params_per_device"],
        analytic_params_per_device=a["params_per_device"],
        state_gib_per_device=round(r["state_bytes_per_device"] / GIB, 3),
        compiled_temp_gib=round(m["temp"] / GIB, 3),
        compile_s=s["compile_s"],
        fits_80gb_compiled=m["peak"] <= H100_BYTES,
        fits_80gb_analytic=a["peak"] <= H100_BYTES,
        wall_s=round(time.time() - t0, 1),
      )
    )
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--case", action="append", help="PHASE:DEVICES[:OVERRIDES]; default dynamics:8 and tokenizer:8")
  ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case (both windows of a dynamics case)")
  ap.add_argument("--out", default=None, help="also append the lines to this file")
  args = ap.parse_args(argv)
  for case in args.case or ["dynamics:8", "tokenizer:8"]:
    for row in run_case(case, args.timeout):
      line = json.dumps(row)
      print(line, flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main()
