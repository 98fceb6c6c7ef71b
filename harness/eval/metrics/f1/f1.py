"""SQuAD token F1."""
from collections import Counter

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval import textnorm
from harness.eval.metrics import base


class F1(base.HarnessMetric):
    """Mean token-overlap F1 between prediction and reference after SQuAD normalization."""
    binary = False

    def score_examples(self, predictions, references):
        out = []
        for p, r in zip(predictions, references):
            pt, rt = textnorm.squad(p).split(), textnorm.squad(r).split()
            if not pt or not rt:
                out.append(float(pt == rt))
                continue
            common = sum((Counter(pt) & Counter(rt)).values())
            if common == 0:
                out.append(0.0)
                continue
            precision, recall = common / len(pt), common / len(rt)
            out.append(2 * precision * recall / (precision + recall))
        return out
