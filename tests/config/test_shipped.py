"""Shipped golden sets and sweep spaces resolve from the package, from any working directory."""
import os

import pytest

from harness.eval import goldensets
from harness.config import shipped
from harness.core.errors import HarnessError


def test_builtin_names_and_checkout_paths_find_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no goldensets/ or sweeps/ here
    assert {"math", "general_knowledge", "math_preferences"} <= set(shipped.names("goldensets"))
    found = shipped.locate("builtin:general_knowledge", "goldensets")
    assert found == str(shipped.ROOT / "goldensets" / "general_knowledge.yaml")
    assert shipped.locate("goldensets/math.yaml", "goldensets") == str(
        shipped.ROOT / "goldensets" / "math.yaml")
    assert shipped.locate("sweeps/sft_math.yaml", "sweeps").startswith(str(shipped.ROOT))
    assert shipped.locate("goldensets/mine.yaml", "goldensets") is None
    assert shipped.same("builtin:math", "goldensets/math.yaml", "goldensets")
    assert goldensets.load("builtin:math", max_examples=3).prompts  # its JSONL beside it
    with pytest.raises(HarnessError, match="unknown built-in golden-set manifest 'builtin:mathh'"
                                           "; did you mean math"):
        shipped.locate("builtin:mathh", "goldensets")


def test_a_users_own_file_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("goldensets")
    (tmp_path / "goldensets" / "math.yaml").write_text("name: mine\n")
    assert shipped.locate("goldensets/math.yaml", "goldensets") == "goldensets/math.yaml"
    assert not shipped.same("builtin:math", "goldensets/math.yaml", "goldensets")
