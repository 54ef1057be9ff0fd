"""Evaluation: the attack protocol (CACC, ASR, RA, trigger effect) and the representation plots."""

from detrigger.evaluation.metrics import Metrics, evaluate, poisoned_test_set

__all__ = ["Metrics", "evaluate", "poisoned_test_set"]
