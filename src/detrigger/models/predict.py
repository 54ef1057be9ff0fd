"""Inference, the one primitive every room uses (training, defences, the scan, filters, evaluation): a model's
logits or predicted labels for texts, read as the model reads them (through its input transform, if any)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from detrigger.batching import bucketed_batches, collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.device import Precision, autocast
from detrigger.models.victim import Victim


@torch.no_grad()
def predict_logits(victim: Victim, texts: Sequence[str], *, batch_size: int = 128,
                   precision: Precision = "fp32", bar: tqdm | None = None) -> np.ndarray:
    """Logits (N, num_labels) in input order, on the victim's current device, in eval mode; `bar` (a
    progress bar) advances by the texts of each batch."""
    model = victim.model
    was_training = model.training
    model.eval()
    ids = encode(victim.tokenizer, victim.prepare(texts), victim.max_length)
    out = np.zeros((len(ids), victim.num_labels), dtype=np.float32)
    device = victim.device
    try:
        with autocast(device, precision):
            for batch in bucketed_batches([len(x) for x in ids], batch_size):
                inputs = collate([ids[i] for i in batch], victim.tokenizer.pad_token_id, device)
                out[batch] = model(**inputs).logits.float().cpu().numpy()
                if bar is not None:
                    bar.update(len(batch))
    finally:
        model.train(was_training)
    return out


def predict(victim: Victim, texts: Sequence[str], **kwargs) -> np.ndarray:
    """Predicted label ids in input order."""
    return predict_logits(victim, texts, **kwargs).argmax(axis=1)


def accuracy(pred: np.ndarray, gold: Sequence[int]) -> float:
    """Share of predictions equal to the gold labels (NaN for no texts)."""
    gold = np.asarray(gold)
    return float((np.asarray(pred) == gold).mean()) if len(gold) else float("nan")


def accuracy_on(victim: Victim, data: TextDataset, **kwargs) -> float:
    """The model's accuracy on labelled texts."""
    return accuracy(predict(victim, data.texts, **kwargs), data.labels)
