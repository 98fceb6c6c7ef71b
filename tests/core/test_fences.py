"""Patches of private internals run only inside the library versions they were tested with;
outside, each is skipped with one line and the plain path runs."""
from __future__ import annotations

import dataclasses

import pytest

from harness.core import fences
from harness.accel import kernels
from harness import models
from harness.config import recipe
from harness.train import trainers

pytestmark = pytest.mark.fenced


@pytest.fixture
def fenced(monkeypatch):
    """fence(patch, package): that patch's tested range excludes the installed version."""
    def fence(patch: str, package: str) -> None:
        monkeypatch.setitem(fences.TESTED, patch, {package: ">=999"})
        fences.allowed.cache_clear()
    yield fence
    fences.allowed.cache_clear()


@pytest.fixture
def every_fence_on(monkeypatch):
    """Every range admits the version installed here: the newest releases' check (.ci/newest)
    runs the tests below on releases that may turn a fence off; `harness fences --check` and the
    test after this fixture are what say so."""
    for patch, packages in fences.TESTED.items():
        monkeypatch.setitem(fences.TESTED, patch, {
            p: f"=={fences.installed(p).split('+')[0]}" if fences.installed(p) else spec
            for p, spec in packages.items()})
    fences.allowed.cache_clear()
    yield
    fences.allowed.cache_clear()


def test_the_versions_installed_here_are_the_tested_ones():
    """CI installs constraints.txt: a bump there without a test run and a wider range here fails."""
    for patch, packages in fences.TESTED.items():
        for package in packages:
            assert fences.installed(package), f"{patch}: {package} is not installed"
        assert fences.why_not(patch) is None, fences.why_not(patch)


def test_a_fenced_patch_says_why_once_and_is_skipped(fenced, tiny_model_dir, capsys):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    capsys.readouterr()  # transformers' loading bar
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    with kernels.fused_norms(model, True) as n:
        # inside the tested versions: every norm swapped (2 layers' 2 and the final one)
        assert n == len(norms) == 5 and all(type(m).__name__ == "FusedLlamaRMSNorm"
                                            for m in norms)
    fenced("fused_norm", "transformers")
    for _ in range(2):
        with kernels.fused_norms(model, True) as n:
            assert n == 0 and all(type(m).__name__ == "LlamaRMSNorm" for m in norms)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: fused norm off: transformers ") \
        and "outside the versions it was tested with (>=999)" in lines[0]


def test_outside_the_tested_trl_the_harness_takes_plain_trl_batches(every_fence_on, fenced,
                                                                     recipe_dict, tmp_path):
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": True})
    gpu = dataclasses.replace(models.device_plan(r.model), cuda_graphs=True, pad_packed=True,
                              packing=True)
    config = trainers.build_config(r, gpu, str(tmp_path))
    assert trainers.padding_free(config) and trainers.graph_blocker(r, config, gpu) is None
    fenced("padding_free_rule", "trl")
    assert not trainers.padding_free(config)
    fenced("cuda_graphs", "trl")
    assert "trl " in trainers.graph_blocker(r, config, gpu) and ">=999" in \
        trainers.graph_blocker(r, config, gpu)


def test_validate_and_a_run_name_the_fences_off_and_the_tested_set(every_fence_on, fenced,
                                                                    recipe_dict, write_recipe,
                                                                    capsys):
    """A user learns before the run which fast paths this install turns off and the one command
    that brings the tested versions back (issue 48)."""
    from harness.commands import cli
    path = write_recipe(recipe_dict)
    assert cli.main(["validate", path]) == 0
    assert "fast paths off" not in capsys.readouterr().out  # the tested set: all on
    fenced("trace_store", "mlflow")
    fenced("fused_norm", "transformers")
    assert cli.main(["validate", path]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "fast paths off" in x)
    from importlib.metadata import version
    assert f"(transformers {version('transformers')}, mlflow {version('mlflow')}):" in line
    assert line.endswith("fused_norm, trace_store; the tested set: "
                         "pip install -c constraints.txt -e .")
    # a run says it first, before its time is spent (here: an unknown recipe key stops it)
    assert cli.main(["train", path, "--set", "nosuch=1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("harness: fast paths off") and err[-1].startswith("error: ")


def test_the_report_says_which_fences_are_off_and_what_widens_each(monkeypatch, capsys):
    """`harness fences`: one line a patch, each package against its tested range; --check fails
    naming those off, a GPU-only one sent to the GPU check (the CI step on the newest releases)."""
    from harness.commands import cli
    real = fences.installed
    newest = {"transformers": "9.0.0", "trl": "1.99.0"}
    monkeypatch.setattr(fences, "installed", lambda p: newest.get(p) or real(p))
    rows = {f.patch: f for f in fences.report()}
    assert list(rows) == list(fences.TESTED)
    graphs, lm_head, store = rows["cuda_graphs"], rows["fused_lm_head"], rows["trace_store"]
    assert not graphs.on and graphs.gpu_only and not lm_head.on and not lm_head.gpu_only
    assert store.on and not store.gpu_only  # mlflow as installed here: within its range
    assert [(v.package, v.have, v.inside) for v in lm_head.versions] == [("trl", "1.99.0", False)]
    assert "transformers 9.0.0 OUTSIDE >=5.17" in graphs.line() and graphs.line().startswith(
        "cuda_graphs         OFF ") and "GPU only" in graphs.line()
    assert cli.main(["fences", "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(fences.TESTED) + 1
    assert out[-1].startswith("fences off on these releases: fused_norm, padding_free_rule, "
                              "fused_lm_head, prepared_rows (widen TESTED once their tests pass")
    assert "; cuda_graphs (GPU only: widen after the GPU check" in out[-1]
    assert cli.main(["fences"]) == 0  # without --check it only says
    newest.clear()
    monkeypatch.setattr(fences, "installed", lambda p: "1.0" if p == "datasets" else real(p))
    assert cli.main(["fences", "--check"]) == 1  # datasets 1.0 < 5.0: prepared_rows alone
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "fences off on these releases: prepared_rows (")
    monkeypatch.setattr(fences, "installed", lambda p: None)  # no package a fence holds against
    assert fences.verdict(fences.report()) is None
    assert all(str(v).endswith(f"not installed {v.tested}") for v in fences.versions("fused_norm"))


def test_a_gpu_check_owed_for_exactly_these_releases_passes_the_check_and_nothing_else(
        monkeypatch, capsys):
    """OWED_GPU_CHECK: a GPU-only fence off on the newest releases, its GPU run owed, is said and
    lets the check pass; a release past the listed one, another fence off, or the entry left
    behind once the fence is on, fails it."""
    from harness.commands import cli
    real = fences.installed
    newest = {"transformers": "9.0.0"}
    monkeypatch.setattr(fences, "installed", lambda p: newest.get(p) or real(p))
    monkeypatch.setitem(fences.TESTED, "fused_norm", {"transformers": ">=5.17"})  # CPU: on
    monkeypatch.setattr(fences, "OWED_GPU_CHECK", {"cuda_graphs": {"transformers": "9.0.0"}})
    rows = {f.patch: f for f in fences.report()}
    assert rows["cuda_graphs"].owed and "its GPU check owed" in rows["cuda_graphs"].line()
    assert cli.main(["fences", "--check"]) == 0
    newest["transformers"] = "9.1.0"  # the next release: the owed check no longer covers it
    assert cli.main(["fences", "--check"]) == 1
    assert "cuda_graphs (GPU only" in capsys.readouterr().out.splitlines()[-1]
    newest["transformers"] = "9.0.0"
    newest["mlflow"] = "9.9.0"  # a CPU fence off beside it fails, the owed one still said
    assert cli.main(["fences", "--check"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert "trace_store" in last and "cuda_graphs" not in last
    del newest["mlflow"]  # widened on the listed release, the entry left behind: fails
    monkeypatch.setitem(fences.TESTED, "cuda_graphs", {"transformers": ">=5.17"})
    assert cli.main(["fences", "--check"]) == 1
    assert "cuda_graphs on, still in OWED_GPU_CHECK" in capsys.readouterr().out.splitlines()[-1]
