"""Property: whatever YAML a user writes, the recipe loader returns a Recipe or raises the
harness's own one-line error; never another exception."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.config import recipe
from harness.core.errors import HarnessError

VALID = recipe.read_yaml("recipes/sft_math.yaml")
KEYS = sorted({k for section in VALID.values() if isinstance(section, dict) for k in section}
              | set(VALID) | {"quantization", "init_from", "early_stopping", "patience"})

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=16) | st.sampled_from(["auto", "lora", "sft", "dpo", "1e-4", "-1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


PATHS = sorted(_paths(VALID))


@st.composite
def mutated(draw):
    """The shipped recipe with a few keys replaced, dropped or misspelt."""
    d = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = d
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        action = draw(st.sampled_from(["replace", "drop", "rename"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1] + draw(st.sampled_from(["_", "s", "x"]))] = parent.pop(path[-1])
    return yaml.safe_dump(d, allow_unicode=True)


def _dump(v) -> str:
    try:
        return yaml.safe_dump(v, allow_unicode=True)
    except (ValueError, OverflowError):
        return "{}"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=st.one_of(mutated(), values.map(_dump), st.text(max_size=120)))
def test_random_yaml_gives_a_recipe_or_a_harness_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        r = recipe.load(path)
    except HarnessError as e:
        assert str(e).startswith(str(path)) and len(str(e).splitlines()) == 1
        return
    assert isinstance(r, recipe.Recipe)
