"""Golden sets as data: the split of a sweep's objective set into selection and held-out parts."""
import random

import pytest

from harness.eval import goldensets
from harness.eval.goldensets import GoldenSet, Manifest


def _set(n: int, rows=None) -> GoldenSet:
    rows = rows or [(f"question {i}?", f"#### {i}") for i in range(n)]
    m = Manifest(name="math", source="m.jsonl", metrics=["numeric_accuracy"])
    return GoldenSet(m, "m.yaml", [q for q, _ in rows], [a for _, a in rows])


@pytest.mark.parametrize("n,share,held", [(40, 0.5, 20), (4, 0.5, 2), (2, 0.9, 1), (10, 0.01, 1)])
def test_a_split_holds_out_its_share_and_leaves_some_to_select_on(n, share, held):
    select, out = goldensets.split(_set(n), share, seed=0)
    assert (select.name, out.name) == ("math", "math_heldout")
    assert len(out.prompts) == held and len(select.prompts) == n - held
    assert sorted(select.prompts + out.prompts) == sorted(_set(n).prompts)
    for part in (select, out):  # each prompt keeps its own answer
        assert all(a == f"#### {q.split()[1][:-1]}" for q, a in zip(part.prompts, part.references))


def test_the_same_examples_are_held_out_whatever_the_row_order_and_the_seed_changes_them():
    rows = [(f"question {i}?", f"#### {i}") for i in range(40)]
    _, held = goldensets.split(_set(40, rows), 0.5, seed=0)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    _, again = goldensets.split(_set(40, shuffled), 0.5, seed=0)
    assert set(held.prompts) == set(again.prompts)
    _, other = goldensets.split(_set(40, rows), 0.5, seed=1)
    assert set(held.prompts) != set(other.prompts)
