"""Built-in math data: GSM8K-style multi-step word problems with worked solutions, no network.

Seeded and any size. Operands stay small so a 135M model can learn the arithmetic, and every
problem keeps its steps, so a plausible flawed solution (for preference data) can be made from
the same steps.
"""
from __future__ import annotations

import operator
import random
from dataclasses import dataclass, replace

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Kira",
         "Leo", "Maya", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
         "Will", "Yara", "Zane"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards",
         "books", "beads", "balloons", "coins", "crayons", "eggs", "flowers"]
CONTAINERS = ["bags", "boxes", "jars", "packs", "baskets", "trays"]


@dataclass(frozen=True)
class Step:
    a: int
    op: str
    b: int
    text: str  # the sentence around the equation, with {eq} where "a op b = r" goes

    @property
    def result(self) -> int:
        # only this step's operation: a flawed solution can carry a 0 into `b` of a sum, which
        # a table of all four results divided by (8,000 preference rows of seed 1234 crashed)
        if self.op == "/":
            return self.a // self.b
        return {"+": operator.add, "-": operator.sub, "*": operator.mul}[self.op](self.a, self.b)

    def render(self, result: int | None = None) -> str:
        r = self.result if result is None else result
        return self.text.format(eq=f"{self.a} {self.op} {self.b} = {r}", r=r)


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[Step, ...]

    @property
    def answer_value(self) -> int:
        return self.steps[-1].result

    @property
    def solution(self) -> str:
        return "\n".join(s.render() for s in self.steps) + f"\n#### {self.answer_value}"

    def flawed_solution(self, rng: random.Random) -> str:
        """A plausible wrong solution: one step's result is off and later steps carry the error
        forward, or (half the time on multi-step problems) only the final number is wrong."""
        if len(self.steps) > 1 and rng.random() < 0.5:
            wrong = self.answer_value + rng.choice([-10, -2, -1, 1, 2, 10])
            body = "\n".join(s.render() for s in self.steps)
            return f"{body}\n#### {wrong}"
        bad = rng.randrange(len(self.steps))
        lines, carried = [], {}
        for i, step in enumerate(self.steps):
            step = replace(step, a=carried.get(step.a, step.a), b=carried.get(step.b, step.b))
            result = step.result
            if i == bad:
                result += rng.choice([-3, -2, -1, 1, 2, 3])
            carried[self.steps[i].result] = result
            lines.append(step.render(result))
        if result == self.answer_value:  # the error did not reach the end: make the end wrong
            result += 1
        return "\n".join(lines) + f"\n#### {result}"


def _pick(rng: random.Random, hi: int) -> dict:
    name, friend = rng.sample(NAMES, 2)
    return dict(name=name, friend=friend, item=rng.choice(ITEMS), box=rng.choice(CONTAINERS),
                a=rng.randint(2, hi), b=rng.randint(2, hi), c=rng.randint(2, hi))


def _add_then_sub(rng, hi):
    v = _pick(rng, hi)
    n, a, b, it = v["name"], v["a"], v["b"], v["item"]
    c = rng.randint(1, a + b - 1)
    s1 = Step(a, "+", b, f"{n} has {{eq}} {it} after getting more.")
    s2 = Step(s1.result, "-", c, f"After giving {c} to {v['friend']}, {n} has {{eq}} {it}.")
    q = (f"{n} has {a} {it}. {v['friend']} gives {n} {b} more {it}. Then {n} gives {c} {it} "
         f"back to {v['friend']}. How many {it} does {n} have now?")
    return Problem(q, (s1, s2))


def _groups_plus_loose(rng, hi):
    v = _pick(rng, hi // 2 + 2)
    n, a, b, c, it, box = v["name"], v["a"], v["b"], v["c"], v["item"], v["box"]
    s1 = Step(a, "*", b, f"The {box} hold {{eq}} {it}.")
    s2 = Step(s1.result, "+", c, f"With the loose ones, {n} has {{eq}} {it}.")
    q = (f"{n} has {a} {box} with {b} {it} in each, and {c} loose {it}. "
         f"How many {it} does {n} have in all?")
    return Problem(q, (s1, s2))


def _change_from_payment(rng, hi):
    v = _pick(rng, 9)
    n, price, count, it = v["name"], v["a"], v["b"], v["item"]
    cost = price * count
    paid = (cost // 10 + 1) * 10
    s1 = Step(price, "*", count, f"The {it} cost {{eq}} dollars.")
    s2 = Step(paid, "-", cost, f"{n} gets {{eq}} dollars in change.")
    q = (f"{it.capitalize()} cost ${price} each. {n} buys {count} {it} and pays with ${paid}. "
         f"How many dollars of change does {n} get?")
    return Problem(q, (s1, s2))


def _share_equally(rng, hi):
    v = _pick(rng, min(hi, 10))
    n, per, people, extra, it = v["name"], v["a"], v["b"], v["c"], v["item"]
    total = per * people
    s1 = Step(total, "/", people, f"Each friend gets {{eq}} {it}.")
    s2 = Step(s1.result, "+", extra, f"After the extra {it}, each friend has {{eq}} {it}.")
    q = (f"{n} shares {total} {it} equally among {people} friends. Then {n} gives each friend "
         f"{extra} more {it}. How many {it} does each friend have?")
    return Problem(q, (s1, s2))


def _days_then_more(rng, hi):
    v = _pick(rng, hi // 2 + 2)
    n, per, days, extra = v["name"], v["a"], v["b"], v["c"]
    s1 = Step(per, "*", days, f"In {days} days {n} reads {{eq}} pages.")
    s2 = Step(s1.result, "+", extra, f"With the last day, {n} reads {{eq}} pages.")
    q = (f"{n} reads {per} pages a day for {days} days, then reads {extra} pages on one more day. "
         f"How many pages does {n} read in all?")
    return Problem(q, (s1, s2))


def _two_buyers(rng, hi):
    v = _pick(rng, hi)
    n, f, a, b, it = v["name"], v["friend"], v["a"], v["b"], v["item"]
    s1 = Step(a, "+", b, f"{f} has {{eq}} {it}.")
    s2 = Step(a, "+", s1.result, f"Together they have {{eq}} {it}.")
    q = (f"{n} has {a} {it}. {f} has {b} more {it} than {n}. "
         f"How many {it} do {n} and {f} have together?")
    return Problem(q, (s1, s2))


def _simple_sub(rng, hi):
    v = _pick(rng, hi)
    n, it = v["name"], v["item"]
    a = v["a"] + v["b"]
    s1 = Step(a, "-", v["b"], f"{n} has {{eq}} {it} left.")
    q = f"{n} had {a} {it} and lost {v['b']} of them. How many {it} does {n} have left?"
    return Problem(q, (s1,))


TEMPLATES = [_add_then_sub, _groups_plus_loose, _change_from_payment, _share_equally,
             _days_then_more, _two_buyers, _simple_sub]


def generate(n: int, seed: int = 0, max_operand: int = 20) -> list[Problem]:
    """n problems, the same for the same (seed, max_operand)."""
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES)(rng, max_operand) for _ in range(n)]


def generate_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[dict]:
    """Rows in GSM8K's own shape: {"question", "answer"} with the answer ending in '#### N'."""
    return [{"question": p.question, "answer": p.solution} for p in generate(n, seed, max_operand)]


def generate_preference_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[dict]:
    """Preference rows for DPO and reward modeling: the worked solution as `chosen`, a flawed
    one (wrong intermediate step carried forward, or a wrong final number) as `rejected`."""
    rng = random.Random(seed + 1_000_003)  # flaws drawn apart from the problems' own stream
    rows = []
    for p in generate(n, seed, max_operand):
        rejected = p.flawed_solution(rng)
        rows.append({"prompt": p.question, "chosen": p.solution, "rejected": rejected})
    return rows


def generate_unpaired_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[dict]:
    """Unpaired rows for KTO, from the preference rows: each problem gives one completion,
    desirable (`label` true: its worked solution) or undesirable (false: its flawed one), in
    turn, so no prompt has both (KTO's setting: single judgements, not pairs)."""
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"],
             "label": i % 2 == 0}
            for i, r in enumerate(generate_preference_rows(n, seed, max_operand))]
