import math

import pytest

from harness import metrics
from harness.answers import extract_number
from harness.errors import HarnessError


@pytest.mark.parametrize("text, value", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7.0),
    ("#### $1,000.00", 1000.0),
    ("The answer is $1,000.00 in total.", 1000.0),
    ("so 12 cows and 5 pigs, 17 animals. Hope that helps!", 17.0),
    ("#### -3", -3.0),
    ("#### 72\nThe end, 5 stars", 72.0),
    ("no number here", None),
])
def test_extract_number(text, value):
    assert extract_number(text) == value


def test_metrics_are_evaluate_modules_loaded_offline(monkeypatch):
    import evaluate
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = metrics.load("numeric_accuracy")
    assert isinstance(m, evaluate.EvaluationModule)
    out = m.compute(predictions=["#### 7", "it is 1,000.", "x"],
                    references=["so 7\n#### 7", "#### 1000", "#### 2"], per_example=True)
    assert out == {"numeric_accuracy": pytest.approx(2 / 3), "scores": [1.0, 1.0, 0.0]}


def test_answer_format_and_exact_match():
    assert metrics.load("answer_format").compute(
        predictions=["a\n#### 3", "3"], references=["", ""]) == {"answer_format": 0.5}
    assert metrics.load("exact_match").compute(
        predictions=[" Paris ", "rome"], references=["paris", "Madrid"]) == {"exact_match": 0.5}


def test_perplexity_is_token_weighted():
    out = metrics.load("perplexity").compute(nll=[1.0, 6.0], tokens=[1, 3], per_example=True)
    assert out["perplexity"] == pytest.approx(math.exp(7 / 4))
    assert out["scores"] == pytest.approx([math.e, math.exp(2)])
    assert metrics.load("perplexity").higher_is_better is False


def test_unknown_metric_suggests():
    with pytest.raises(HarnessError, match="did you mean numeric_accuracy"):
        metrics.check("numeric_acuracy")
