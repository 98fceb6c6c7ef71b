"""The rooms hold: pyproject's import-linter contracts (only tracking talks to MLflow, only
sweep/storage to Optuna, only train to TRL, only benchmarks to lm-eval, recipe and evaluation
stay light, no cycles, nothing imports cli), run as part of the suite so CI checks them."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_the_import_contracts_hold():
    linter = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "8 kept, 0 broken" in out.stdout
