"""Macro-averaged F1 over classification labels."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval import textnorm
from harness.eval.metrics import base


class MacroF1(base.HarnessMetric):
    """Unweighted mean over `labels` of each label's F1, the prediction's label being the
    first label it names. A corpus metric: per example, 1 if right, 0 if wrong."""
    corpus = True

    def score_examples(self, predictions, references, labels=()):
        return [float(textnorm.first_label(p, list(labels)) == r)
                for p, r in zip(predictions, references)]

    def aggregate(self, scores, predictions, references, labels=()):
        labels = list(labels) or sorted(set(references))
        guess = [textnorm.first_label(p, labels) for p in predictions]
        f1s = []
        for label in labels:
            tp = sum(g == label and r == label for g, r in zip(guess, references))
            fp = sum(g == label and r != label for g, r in zip(guess, references))
            fn = sum(g != label and r == label for g, r in zip(guess, references))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return sum(f1s) / len(f1s)
