#!/usr/bin/env bash
# The GPU side of the newest releases' check (issue 48): fills .whl-newest/ (gitignored) with the
# x86-64 / Python 3.12 wheels a GPU run needs to test the fences on the releases `make
# test-newest` tested on the CPU: the project's GPU set (../shared/device/wheels.sh's .whl), each
# package the newest venv holds at another version, or that .whl lacks, replaced by the newest
# venv's. Not carried: what the GPU image has and the harness must not replace there (torch and
# CUDA, numpy, pyarrow: a carried one broke datasets, see ../shared/README.md).
#
#   make test-newest                 # builds .venv-newest (the versions to carry)
#   ../shared/device/wheels.sh       # .whl: the project's GPU set
#   bash bench/newest_wheels.sh      # .whl-newest, at most 64 MiB with the tracked tree
#
# Then two device calls on the same warm machine (each installs into a NEW empty folder):
#  1. the tested set, the baseline: carry [".whl"]
#     T=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile --target "$T" \
#       .whl/*.whl && export PYTHONPATH="$T:$PWD" PYTHONUNBUFFERED=1 &&
#     python bench/sweep_e2e.py --shared ../shared --trials 3
#  2. the newest set: carry [".whl-newest"]
#     T=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile --target "$T" \
#       .whl-newest/*.whl && export PYTHONPATH="$T:$PWD" PYTHONUNBUFFERED=1 &&
#     python -m harness fences; python -m pytest -q -p no:cacheprovider -m fenced \
#       --deselect tests/core/test_fences.py::test_the_versions_installed_here_are_the_tested_ones;
#     python bench/sweep_e2e.py --shared ../shared --trials 3
# The `fenced` tests include the GPU ones that skip on a CPU (tests/accel/test_graphs.py's CUDA
# graphs, test_attention.py's allocator settings, test_kernels.py on CUDA). Widen cuda_graphs
# (and allocator_settings, fused_norm on a GPU) in harness/core/fences.py once they pass and the
# harness's sweep wall is within noise of call 1's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-newest/bin/python}
[[ -x $PY ]] || { echo "no $PY: run make test-newest first" >&2; exit 2; }
[[ -d .whl ]] || { echo "no .whl: run ../shared/device/wheels.sh first" >&2; exit 2; }
rm -rf .whl-newest && mkdir -p .whl-newest
# name==version of the newest venv's packages that the harness's libraries need, but for what
# the image keeps (pip normalises names: lower case, '-')
"$PY" - > .whl-newest/want.txt <<'PY'
import re
from importlib.metadata import distribution
from packaging.requirements import Requirement

# pytest: the image has none, and the fenced tests run there
ROOTS = ["transformers", "kernels", "trl", "peft", "accelerate", "datasets", "mlflow-skinny",
         "mlflow-tracing", "optuna", "pytest"]
# the image's, and what the project's GPU set leaves to it (../shared/device/wheels.sh)
KEEP = {"torch", "triton", "numpy", "pyarrow", "pandas", "scipy", "matplotlib", "pillow", "sympy",
        "networkx", "jinja2", "markupsafe", "mpmath", "fsspec", "psutil", "pyyaml", "tqdm",
        "rich", "requests", "urllib3", "certifi", "charset-normalizer", "idna", "packaging",
        "typing-extensions", "protobuf", "setuptools", "filelock", "pygments", "markdown-it-py",
        "mdurl", "python-dateutil", "six", "tzdata", "xxhash", "aiohttp", "multidict", "yarl",
        "frozenlist", "aiosignal", "attrs", "propcache", "aiohappyeyeballs"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
seen, todo = {}, list(ROOTS)
while todo:
    name = norm(todo.pop())
    if name in seen or name in KEEP or name.startswith("nvidia-"):
        continue
    d = distribution(name)
    seen[name] = d.version
    for r in map(Requirement, d.requires or []):
        if r.marker is None or r.marker.evaluate({"extra": ""}):
            todo.append(r.name)
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
# the project's set first, then each wanted version it lacks replaces its wheel
cp .whl/*.whl .whl-newest/
missing=()
while IFS='==' read -r name _ version; do
  have=$(ls .whl-newest | grep -i "^$(echo "$name" | tr '-' '_')-" || true)
  [[ $have == *"-$version-"* ]] && continue
  [[ -n $have ]] && rm -f ".whl-newest/$have"
  missing+=("$name==$version")
done < .whl-newest/want.txt
platforms=()  # the GPU image's: x86-64 Linux, glibc 2.34 or older
for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
         manylinux1; do platforms+=(--platform "${p}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d .whl-newest "${missing[@]}"
echo "replaced or added: ${missing[*]}"
du -sh .whl-newest
python3 - <<'PY'
import pathlib, subprocess
files = subprocess.run(["git", "ls-files", "-z"], capture_output=True).stdout.split(b"\0")
tree = sum(pathlib.Path(f.decode()).stat().st_size for f in files if f)
whl = sum(p.stat().st_size for p in pathlib.Path(".whl-newest").glob("*.whl"))
total = (tree + whl) / 2**20
print(f"carried: tree {tree / 2**20:.1f} MiB + .whl-newest {whl / 2**20:.1f} MiB = {total:.1f} MiB")
if total > 63:
    raise SystemExit("over the 64 MiB a device call carries")
PY
