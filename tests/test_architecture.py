"""The house holds: pyproject's import-linter contracts (the layers, only tracking talks to
MLflow, only the study to Optuna, only train to TRL, only eval.lm_eval_tasks to lm-eval, config
and core import no ML library, no cycles, nothing imports the command line), and
docs/architecture.md names exactly the modules in the tree and the layers the contract holds."""
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter's own dependency
    import tomli as tomllib

from conftest import ROOT

DOC = ROOT / "docs" / "architecture.md"


def test_the_import_contracts_hold():
    linter = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    n = len(contracts["contracts"])
    assert f"{n} kept, 0 broken" in out.stdout


def _modules_in_tree() -> set[str]:
    pkg = ROOT / "harness"
    found = set()
    for p in pkg.rglob("*.py"):
        rel = p.relative_to(pkg)
        if rel.parts[0] == "assets" or p.name in ("__init__.py", "__main__.py"):
            continue
        if rel.parts[:2] == ("eval", "metrics"):
            found.add("eval/metrics/")  # one room: a folder of evaluate modules
            continue
        found.add(rel.as_posix())
    return found


def test_the_architecture_page_names_every_module_in_the_tree():
    rooms = set(re.findall(r"^\| `([a-z_/]+(?:\.py|/))` \|", DOC.read_text(), flags=re.M))
    tree = _modules_in_tree()
    assert not tree - rooms, f"modules missing from docs/architecture.md: {sorted(tree - rooms)}"
    assert not rooms - tree, f"docs/architecture.md names modules gone: {sorted(rooms - tree)}"


def test_the_architecture_page_lists_the_layers_the_contract_holds():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in contracts["contracts"] if c["type"] == "layers")["layers"]
    doc = re.findall(r"^\| \d+ \| (.+?) \| ", DOC.read_text(), flags=re.M)
    assert [d.replace("`", "").replace("\\|", "|") for d in doc] == layers
    for layer in layers:  # every layer is a package (or the one module `models`)
        for name in layer.split(" | "):
            assert (ROOT / "harness" / name).is_dir() or (ROOT / "harness" / f"{name}.py").is_file()
