import math

import pytest

from harness.eval import metrics
from harness.eval.answers import extract_number
from harness.core.errors import HarnessError


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


PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there world",
         "It rains.\nThe streets are wet today."]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumped", "hello world",
        "It is raining.\nStreets are wet."]


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    from sacrebleu.metrics import BLEU, CHRF
    cols = {"predictions": PREDS, "references": REFS}
    assert metrics.compute("bleu", cols)["bleu"] == pytest.approx(
        BLEU().corpus_score(PREDS, [REFS]).score)
    assert metrics.compute("chrf", cols)["chrf"] == pytest.approx(
        CHRF().corpus_score(PREDS, [REFS]).score)
    sent = metrics.compute("bleu", cols)["scores"]
    assert sent[0] == pytest.approx(BLEU(effective_order=True).sentence_score(
        PREDS[0], [REFS[0]]).score)


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL", "rougeLsum"])
def test_rouge_equals_rouge_score_with_stemming(kind):
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    want = [scorer.score(r, p)[kind].fmeasure for p, r in zip(PREDS, REFS)]
    out = metrics.compute(kind, {"predictions": PREDS, "references": REFS})
    assert out["scores"] == pytest.approx(want)
    assert out[kind] == pytest.approx(sum(want) / len(want))


@pytest.mark.parametrize("pred, ref, f1", [
    ("the Eiffel Tower", "Eiffel Tower", 1.0),          # articles and case removed
    ("in Paris, France", "Paris", 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # P=1/3, R=1 -> 0.5
    ("blue red", "red green", 0.5),                     # P=1/2, R=1/2
    ("nothing", "something", 0.0),
    ("", "", 1.0),
    ("a", "an", 1.0),                                   # both empty after normalization
])
def test_squad_f1_hand_computed(pred, ref, f1):
    assert metrics.compute("f1", {"predictions": [pred], "references": [ref]})["f1"] == \
        pytest.approx(f1)


def test_exact_match_normalization_options():
    cols = {"predictions": ["The Paris!", "rome"], "references": ["paris", "Rome"]}
    assert metrics.compute("exact_match", cols)["exact_match"] == 0.5
    assert metrics.compute("exact_match", cols, {"normalize": "squad"})["exact_match"] == 1.0
    assert metrics.compute("exact_match", cols, {"ignore_case": False})["exact_match"] == 0.0
    assert metrics.compute("exact_match", {"predictions": ["paris!"], "references": ["Paris"]},
                           {"ignore_punctuation": True})["exact_match"] == 1.0


def test_classification_accuracy_and_macro_f1_equal_sklearn():
    from sklearn.metrics import f1_score
    labels = ["positive", "negative", "neutral"]
    preds = ["Positive!", "negative", "I think it is neutral.", "positive", "meh", "Negative."]
    refs = ["positive", "positive", "neutral", "negative", "neutral", "negative"]
    args = {"labels": labels}
    guessed = ["positive", "negative", "neutral", "positive", "", "negative"]
    assert metrics.compute("accuracy", {"predictions": preds, "references": refs}, args)[
        "accuracy"] == pytest.approx(3 / 6)
    assert metrics.compute("macro_f1", {"predictions": preds, "references": refs}, args)[
        "macro_f1"] == pytest.approx(f1_score(refs, guessed, labels=labels, average="macro",
                                              zero_division=0))


def test_contains_answer():
    out = metrics.compute("contains_answer", {
        "predictions": ["The capital is Paris.", "Parisian food", "seven days", "H2O"],
        "references": ["paris", "Paris", "7", "h2o"]})
    assert out["scores"] == [1.0, 0.0, 0.0, 1.0]
