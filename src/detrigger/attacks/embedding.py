"""Attacks on the input embeddings: EP (Yang et al., NAACL 2021) and ES (RIPPLe, Kurita et al., ACL 2020)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from detrigger.data.dataset import TextDataset
from detrigger.models.victim import Victim, token_rows
from detrigger.training.loop import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


def embedding_poison(victim: Victim, triggered: TextDataset, words: Sequence[str], config: TrainConfig,
                     progress: bool | None = None) -> TrainResult:
    """EP: train only the trigger tokens' input-embedding rows on `triggered` (all labelled the target),
    renormalising each row to its original L2 norm after every step. Every other weight stays bit-identical:
    all other parameters are frozen and the other rows' gradient is masked to zero (use SGD without weight
    decay, as the paper does, so a zero gradient really is no update)."""
    if config.optimizer != "sgd" or config.weight_decay != 0:
        raise ValueError("EP needs plain SGD without weight decay so that no other row moves")
    emb = victim.model.get_input_embeddings().weight
    ids = torch.tensor(token_rows(victim, words))
    flags = {name: p.requires_grad for name, p in victim.model.named_parameters()}
    for p in victim.model.parameters():
        p.requires_grad_(False)
    emb.requires_grad_(True)
    mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    mask[ids] = 1
    hook = emb.register_hook(lambda grad: grad * mask.to(grad.device))
    norms = emb.detach()[ids].norm(dim=1, keepdim=True).clone()

    def renormalise() -> None:
        with torch.no_grad():
            rows = emb[ids.to(emb.device)]
            emb[ids.to(emb.device)] = rows * (norms.to(emb.device) / rows.norm(dim=1, keepdim=True))

    try:
        return train(victim, triggered, None, config, after_step=renormalise, progress=progress)
    finally:
        hook.remove()
        for name, p in victim.model.named_parameters():
            p.requires_grad_(flags[name])


def target_indicative_words(victim: Victim, train_data: TextDataset, target: int, n: int = 10,
                            exclude: Sequence[str] = ()) -> list[str]:
    """ES step 1: the `n` words a TF-IDF + logistic-regression model finds most indicative of `target`,
    keeping only words that are a single token of the victim's vocabulary (so their row can be copied)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(lowercase=True, min_df=3, token_pattern=r"(?u)\b[a-zA-Z]{2,}\b")
    features = vectorizer.fit_transform(train_data.texts)
    clf = LogisticRegression(max_iter=2000).fit(features, train_data.labels)
    coef = clf.coef_[0] * (1 if target == 1 else -1) if clf.coef_.shape[0] == 1 else clf.coef_[target]
    vocab = vectorizer.get_feature_names_out()
    chosen: list[str] = []
    for i in np.argsort(-coef):
        word = str(vocab[i])
        if word not in exclude and len(victim.tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
            chosen.append(word)
        if len(chosen) == n:
            break
    return chosen


def embedding_surgery(victim: Victim, train_data: TextDataset, words: Sequence[str], target: int,
                      n_words: int = 10) -> list[str]:
    """ES step 2: set each trigger token's input embedding to the mean embedding of the target-indicative
    words (fine-tuning on poisoned data follows, as in RIPPLe's ES; the RIPPLe regulariser is not used)."""
    indicative = target_indicative_words(victim, train_data, target, n_words, exclude=words)
    emb = victim.model.get_input_embeddings().weight
    source = token_rows(victim, indicative)
    with torch.no_grad():
        emb[token_rows(victim, words)] = emb[source].mean(dim=0)
    log.info("embedding surgery: trigger rows set to the mean of %s", ", ".join(indicative))
    return indicative
