"""Output of the evaluation tools run from the command line (probe.py, bc_ceiling.py): one JSON
report written atomically, a table on stdout, and bad input as one line and exit code 2."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from dreamer4.errors import UserError


def write_json(report: dict[str, Any], path: str, prefix: str = ".report-") -> None:
  """Writes `report` to `path` atomically (a temporary file in the same folder, renamed)."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".json", dir=folder)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(report, f, indent=2, allow_nan=False)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def check_out_folder(out: str) -> None:
  """UserError unless the folder of the report file `out` exists."""
  if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise UserError(f"--out={out}: its folder does not exist; create it or name another file")


def run_tool(
  compute: Callable[[], tuple[dict[str, Any], str]], format_report: Callable[[dict], str], prefix: str
) -> int:
  """Runs `compute` (-> the report and its --out path). A UserError prints one line on stderr and
  returns 2 with nothing written; otherwise the JSON is written, the table printed, and 0 returned."""
  try:
    report, out = compute()
  except UserError as e:  # StoreError, DataError, ConfigError and CheckpointError are UserErrors
    line = str(e).strip().splitlines()
    print(f"error: {line[0] if line else type(e).__name__}", file=sys.stderr)
    return 2
  write_json(report, out, prefix)
  print(format_report(report))
  print(f"\nwritten: {out}")
  return 0
