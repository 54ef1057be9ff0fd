"""Evaluation: the one metrics module (CACC, ASR, RA, trigger effect)."""

from detrigger.evaluation.metrics import (
    Metrics,
    Trigger,
    accuracy,
    evaluate,
    poisoned_test_set,
    predict,
    predict_logits,
)

__all__ = ["Metrics", "Trigger", "accuracy", "evaluate", "poisoned_test_set", "predict", "predict_logits"]
