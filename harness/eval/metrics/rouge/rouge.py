"""ROUGE F-measure from Google's rouge-score, with stemming."""
import nltk  # noqa: F401  (rouge-score needs it; named so evaluate's import check sees it)
from rouge_score import rouge_scorer

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class Rouge(base.HarnessMetric):
    """Mean ROUGE F-measure (`rouge_type`: rouge1, rouge2, rougeL, rougeLsum; Porter stemming
    on). rougeLsum splits summaries into sentences at newlines, as rouge-score expects."""
    binary = False

    def score_examples(self, predictions, references, rouge_type="rougeL"):
        scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)
        return [scorer.score(r, p)[rouge_type].fmeasure for p, r in zip(predictions, references)]
