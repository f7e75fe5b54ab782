"""The README's Layout section names every module of the tree, and nothing that is not there."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "data_pipelines", "dreamer4", "benchmarks")


def _layout() -> str:
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Layout") :]
  return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_layout_names_every_module():
  layout = _layout()
  named = set(re.findall(r"[\w.]+\.(?:py|html|sh|sbatch|md)\b", layout))
  missing = []
  for pkg in PACKAGES:
    for path in (ROOT / pkg).rglob("*.py"):
      if path.name == "__init__.py" and path.parent.name not in ("envs", "craftax", "phases"):
        continue
      if path.name not in named:
        missing.append(str(path.relative_to(ROOT)))
  for path in (ROOT / "launch").iterdir():
    if path.name not in named:
      missing.append(str(path.relative_to(ROOT)))
  assert not missing, f"README Layout does not name: {missing}"


def test_layout_names_only_files_that_exist():
  layout = _layout()
  named = set(re.findall(r"[\w.]+\.(?:py|html|sh|sbatch|md)\b", layout))
  tree = {p.name for d in (*PACKAGES, "launch", "docs", "dreamer4/play") for p in (ROOT / d).rglob("*")}
  assert named - tree == set()
  folders = set(re.findall(r"(?<![\w/])([a-z_]+)/", layout))
  dirs = {p.name for d in (*PACKAGES, "launch", "docs", "tests") for p in (ROOT / d).rglob("*") if p.is_dir()}
  dirs |= {p.name for p in ROOT.iterdir() if p.is_dir()}
  assert folders - dirs == set()
