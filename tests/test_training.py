"""The one training loop on a tiny random BERT: learns, is deterministic, keeps the best epoch."""

import pytest
import torch

from detrigger import DetriggerError, TrainConfig, evaluate, train
from detrigger.training.loop import TrainResult

from conftest import tiny_victim, toy_sentiment


def weights(victim):
    return {k: v.clone() for k, v in victim.model.state_dict().items()}


def test_learns_a_trivial_task():
    data = toy_sentiment(64)
    victim = tiny_victim()
    before = evaluate(victim, data).cacc
    result = train(victim, data, data, TrainConfig(epochs=8, lr=3e-3, batch_size=8), progress=False)
    assert result.history[-1]["ce"] < result.history[0]["ce"]
    assert evaluate(victim, data).cacc == 1.0 > before
    assert result.best_val_accuracy == 1.0
    assert result.tokens > 0 and result.examples == 8 * 64 and result.train_seconds <= result.seconds


def test_same_seed_same_weights_and_different_seed_differs():
    data = toy_sentiment(32)
    runs = []
    for seed in (1, 1, 2):
        victim = tiny_victim(seed=0)
        train(victim, data, None, TrainConfig(epochs=2, lr=1e-3, batch_size=8, seed=seed), progress=False)
        runs.append(weights(victim))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_keeps_the_best_validation_epoch(monkeypatch):
    """Epoch 1 is made the best by a validation score that then drops: its weights must come back."""
    data = toy_sentiment(32)
    victim = tiny_victim()
    snapshots = []
    scores = iter([0.9, 0.5, 0.4])

    def fake_accuracy(pred, gold):
        snapshots.append(weights(victim))
        return next(scores)

    monkeypatch.setattr("detrigger.training.loop.accuracy", fake_accuracy)
    result = train(victim, data, data, TrainConfig(epochs=3, lr=1e-3, batch_size=8), progress=False)
    assert result.best_epoch == 1 and result.best_val_accuracy == 0.9
    final = weights(victim)
    assert all(torch.equal(final[k], snapshots[0][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[2][k]) for k in final)


def test_extra_loss_terms_are_added_and_logged():
    data = toy_sentiment(16)
    victim = tiny_victim()
    seen = {}

    def attention_penalty(batch, outputs):
        seen["n_layers"] = len(outputs.attentions)
        return 0.5 * torch.stack([a.mean() for a in outputs.attentions]).sum()

    victim.set_attention("eager")
    result = train(victim, data, None, TrainConfig(epochs=1, batch_size=8),
                   extra_losses={"att": attention_penalty}, forward_kwargs={"output_attentions": True},
                   progress=False)
    record = result.history[0]
    assert seen["n_layers"] == 2
    assert record["att"] > 0 and record["loss"] == pytest.approx(record["ce"] + record["att"], rel=1e-5)


def test_bf16_autocast_runs_on_cpu():
    data = toy_sentiment(16)
    victim = tiny_victim()
    result = train(victim, data, data, TrainConfig(epochs=1, batch_size=8, precision="bf16"), progress=False)
    assert isinstance(result, TrainResult) and result.history[0]["ce"] > 0


def test_rejects_unknown_config_keys_and_label_mismatch():
    with pytest.raises(ValueError, match="epoch"):
        TrainConfig(epoch=3)
    data = toy_sentiment(8)
    with pytest.raises(DetriggerError, match=r"^training data labels \[negative, positive\] differ from the model's "
                                             r"\[a, b\]$"):
        train(tiny_victim(label_names=("a", "b")), data, None, progress=False)
