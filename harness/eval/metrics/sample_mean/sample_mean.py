"""A benchmark's continuous per-document scores (lm-eval metrics aggregated by their mean), as
lm-eval scored them: their mean, compared by a Wilcoxon signed-rank test
(harness.eval.lm_eval_tasks)."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class SampleMean(base.HarnessMetric):
    """Mean of per-document scores that lm-evaluation-harness computed."""
    features = base.DOC_IDS
    binary = False

    def score_examples(self, doc_ids, sample_scores=()):
        return [float(s) for s in sample_scores]
