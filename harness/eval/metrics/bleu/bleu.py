"""Corpus BLEU from sacrebleu."""
from sacrebleu.metrics import BLEU as SacreBLEU

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class Bleu(base.HarnessMetric):
    """sacrebleu's corpus BLEU (0-100, default 13a tokenization, one reference each); per
    example, sentence BLEU with effective order."""
    corpus = True
    binary = False

    def score_examples(self, predictions, references):
        sent = SacreBLEU(effective_order=True)
        return [sent.sentence_score(p, [r]).score for p, r in zip(predictions, references)]

    def aggregate(self, scores, predictions, references):
        return SacreBLEU().corpus_score(list(predictions), [list(references)]).score
