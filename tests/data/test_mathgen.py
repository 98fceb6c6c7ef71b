import re

from harness.data import mathgen
from harness.eval.answers import extract_number


def test_same_seed_same_problems_other_seed_other_problems():
    assert mathgen.generate_rows(20, seed=1) == mathgen.generate_rows(20, seed=1)
    assert mathgen.generate_rows(20, seed=1) != mathgen.generate_rows(20, seed=2)


def test_solutions_are_worked_correct_and_end_in_the_answer():
    for p in mathgen.generate(500, seed=7):
        lines = p.solution.splitlines()
        assert lines[-1] == f"#### {p.answer_value}"
        for a, op, b, r in re.findall(r"(\d+) ([-+*/]) (\d+) = (-?\d+)", p.solution):
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                    "/": int(a) // int(b)}[op] == int(r)
        assert len(re.findall(r" = ", p.solution)) == len(p.steps)
        assert extract_number(p.solution) == p.answer_value
        assert p.answer_value >= 0


def test_any_size_and_all_templates_used():
    rows = mathgen.generate(2000, seed=0)
    assert len(rows) == 2000
    assert len({p.steps[0].text.split("{")[0][:8] for p in rows}) >= 5
    assert max(len(p.steps) for p in rows) == 2


def test_preference_rows_reject_a_plausible_wrong_solution():
    rows = mathgen.generate_preference_rows(300, seed=4)
    assert rows == mathgen.generate_preference_rows(300, seed=4)
    for r in rows:
        assert r["chosen"] != r["rejected"]
        assert extract_number(r["chosen"]) != extract_number(r["rejected"])
        assert r["rejected"].splitlines()[-1].startswith("#### ")
    # both kinds of flaw occur: a wrong step carried forward, and only the final number wrong
    same_body = sum(r["chosen"].rsplit("\n", 1)[0] == r["rejected"].rsplit("\n", 1)[0]
                    for r in rows)
    assert 0 < same_body < len(rows)


def test_flawed_solutions_never_divide_by_a_carried_zero():
    # seed 1234 at 8,000 rows once carried a flawed 0 into a sum (ZeroDivisionError)
    rows = mathgen.generate_preference_rows(8000, 1234)
    assert len(rows) == 8000 and all(r["chosen"] != r["rejected"] for r in rows)
