"""Training: the one loop and its batching."""

from detrigger.training.loop import ExtraLoss, TrainConfig, TrainResult, train
from detrigger.training.recipe import fine_tune_new

__all__ = ["ExtraLoss", "TrainConfig", "TrainResult", "fine_tune_new", "train"]
