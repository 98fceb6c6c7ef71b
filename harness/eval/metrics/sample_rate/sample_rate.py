"""A benchmark's 0/1 per-document scores (lm-eval's acc, exact_match...), as lm-eval scored
them: their mean, compared by McNemar's test (harness.eval.lm_eval_tasks)."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class SampleRate(base.HarnessMetric):
    """Mean of per-document 0/1 scores that lm-evaluation-harness computed."""
    features = base.DOC_IDS

    def score_examples(self, doc_ids, sample_scores=()):
        return [float(s) for s in sample_scores]
