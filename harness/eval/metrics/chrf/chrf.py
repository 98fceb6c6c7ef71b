"""Corpus chrF from sacrebleu."""
from sacrebleu.metrics import CHRF as SacreCHRF

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class Chrf(base.HarnessMetric):
    """sacrebleu's corpus chrF (character n-gram F-score, beta 2, 0-100); per example, sentence
    chrF."""
    corpus = True
    binary = False

    def score_examples(self, predictions, references):
        m = SacreCHRF()
        return [m.sentence_score(p, [r]).score for p, r in zip(predictions, references)]

    def aggregate(self, scores, predictions, references):
        return SacreCHRF().corpus_score(list(predictions), [list(references)]).score
