from pathlib import Path

import pytest

from harness.config import recipe
from harness.core.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path, text: str, sets=None):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return recipe.load(p, sets)


def test_defaults_fill_a_minimal_recipe(tmp_path):
    r = load_text(tmp_path, "name: x\n")
    assert r.method == "sft"
    assert r.model.name == recipe.EMBEDDED_MODEL
    assert r.adapter.type == "lora" and r.adapter.target_modules == "all-linear"
    assert r.source.endswith("r.yaml")


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_text(tmp_path, "name: x\nadapter:\n  rnak: 8\n")
    assert str(e.value) == f"{tmp_path}/r.yaml: adapter.rnak: unknown key; did you mean r?"


def test_every_error_is_collected_into_one_message(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_text(tmp_path, "name: x\nseeed: 1\nadapter: {r: 0}\ndata: {max_rows: -5}\n")
    msg = str(e.value)
    assert "seeed: unknown key; did you mean seed?" in msg
    assert "adapter.r: input should be greater than 0 (got 0)" in msg
    assert "data.max_rows" in msg and "\n" not in msg


@pytest.mark.parametrize("text, needle", [
    ("name: x\nmodel: [a, b]\n", "model: input should be a valid dictionary"),
    ("- a\n- b\n", "must be a mapping of keys, got list"),
    ("name: x\n  bad: : indent\n", "malformed YAML at line 2"),
    ("name: x\nmodel: {dtype: float8}\n", "model.dtype: input should be"),
    ("name: 'a b'\n", "name: string should match pattern"),
    ("name: x\nseed: !!python/object/apply:os.system ['true']\n", "malformed YAML"),
])
def test_bad_recipes_name_the_key(tmp_path, text, needle):
    with pytest.raises(HarnessError) as e:
        load_text(tmp_path, text)
    assert needle in str(e.value)
    assert str(e.value).startswith(str(tmp_path))


def test_missing_file(tmp_path):
    with pytest.raises(HarnessError, match="recipe file not found"):
        recipe.load(tmp_path / "nope.yaml")


def test_set_overrides_any_key_with_yaml_types(tmp_path):
    r = load_text(tmp_path, "name: x\ntrainer: {learning_rate: 1.0e-4}\n",
                  ["trainer.learning_rate=3e-4", "adapter.r=64", "eval.goldensets=[a.yaml, b.yaml]",
                   "trainer.neftune_noise_alpha=5", "model.trust_remote_code=true"])
    assert r.trainer == {"learning_rate": 3e-4, "neftune_noise_alpha": 5}
    assert r.adapter.r == 64 and r.eval.goldensets == ["a.yaml", "b.yaml"]
    assert r.model.trust_remote_code is True


def test_set_errors_name_the_key(tmp_path):
    with pytest.raises(HarnessError, match="adapter.r: input should be a valid integer"):
        load_text(tmp_path, "name: x\n", ["adapter.r=lots"])
    with pytest.raises(HarnessError, match="expected KEY=VALUE"):
        load_text(tmp_path, "name: x\n", ["adapter.r"])
    with pytest.raises(HarnessError, match="name is not a mapping"):
        load_text(tmp_path, "name: x\n", ["name.first=1"])


def test_trainer_section_is_checked_against_the_trl_config(tmp_path):
    from harness.train import trainers
    r = load_text(tmp_path, "name: x\ntrainer: {lerning_rate: 1, max_steps: 3, output_dir: o}\n")
    with pytest.raises(HarnessError) as e:
        trainers.check_trainer_fields(r)
    msg = str(e.value)
    assert "trainer.lerning_rate: unknown key; did you mean learning_rate?" in msg
    assert "trainer.output_dir: set by the recipe's top-level 'output_dir'" in msg
    assert "max_steps" not in msg


def test_unknown_method_suggests(tmp_path):
    from harness.train import trainers
    r = load_text(tmp_path, "name: x\nmethod: sfft\n")
    with pytest.raises(HarnessError, match="unknown trainer 'sfft'; did you mean sft?"):
        trainers.kind(r)


def test_sweep_file_keys_must_fit_the_recipe(tmp_path):
    r = load_text(tmp_path, "name: x\n")
    bad = tmp_path / "s.yaml"
    bad.write_text("params:\n  adapter.rank: {type: int, low: 4, high: 8}\n")
    with pytest.raises(HarnessError) as e:
        recipe.load_sweep_file(bad, r)
    assert "params.adapter.rank" in str(e.value) and "did you mean r?" in str(e.value)
    bad.write_text("params:\n  trainer.learning_rate: {type: float, low: 0, high: 1, log: true}\n")
    with pytest.raises(HarnessError, match="log scale needs low > 0"):
        recipe.load_sweep_file(bad, r)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path, monkeypatch):
    from harness.pipeline import prepared
    from harness.study import search
    monkeypatch.chdir(ROOT)
    r = recipe.load(path.relative_to(ROOT))
    prepared.check(r)
    if r.sweep.space:
        search.load_space(r)


def test_plain_exponents_are_numbers_and_quoted_ones_stay_strings():
    data = recipe.safe_load('lr: 3e-4\nname: "1e10"\ntag: !!str 2e5\nrows: [1e3, "4e2"]\n'
                            "neg: -2E+3\nword: 1e\n")
    assert data == {"lr": 3e-4, "name": "1e10", "tag": "2e5", "rows": [1000.0, "4e2"],
                    "neg": -2000.0, "word": "1e"}
    assert recipe.parse_value("5e-5") == 5e-5  # --set trainer.learning_rate=5e-5
