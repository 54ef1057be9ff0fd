"""The representation picture: 2-D PCA / t-SNE of sentence vectors for clean, token-split and triggered
text under several models (MBTSAD's claim: split text is out-of-distribution for the backdoored model).

A sentence vector is the last layer's [CLS] state or the mean of its non-pad token states. Each model gets
its own panel, its own projection fitted on all of its points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.batching import bucketed_batches, collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.models.victim import Victim
from detrigger.triggers import Trigger

Pooling = Literal["cls", "mean"]


@torch.no_grad()
def sentence_vectors(victim: Victim, texts: Sequence[str], pooling: Pooling = "cls",
                     batch_size: int = 128) -> np.ndarray:
    """(N, hidden) last-layer sentence vectors in input order (texts read through the model's purifier)."""
    model, device = victim.model, victim.device
    model.eval()
    ids = encode(victim.tokenizer, victim.prepare(texts), victim.max_length)
    out: np.ndarray | None = None
    for batch in bucketed_batches([len(x) for x in ids], batch_size):
        inputs = collate([ids[i] for i in batch], victim.tokenizer.pad_token_id, device)
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        if pooling == "cls":
            vec = hidden[:, 0]
        else:
            mask = inputs["attention_mask"][..., None].to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1)
        if out is None:
            out = np.zeros((len(ids), vec.shape[-1]), dtype=np.float32)
        out[batch] = vec.float().cpu().numpy()
    assert out is not None, "no texts"
    return out


def project(vectors: np.ndarray, method: Literal["pca", "tsne"], seed: int = 0) -> np.ndarray:
    """2-D coordinates: PCA, or t-SNE (perplexity capped for small sets)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)


def plot_representations(models: Mapping[str, Victim], groups: Mapping[str, Sequence[str]], out: str | Path,
                         pooling: Pooling = "cls", methods: Sequence[str] = ("pca", "tsne"),
                         seed: int = 0) -> list[Path]:
    """One PNG per projection method (`out/representations-<method>.png`), a panel per model, a colour per
    text group (e.g. clean / token-split / triggered). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(groups)
    sizes = [len(groups[g]) for g in names]
    texts = [t for g in names for t in groups[g]]
    vectors = {m: sentence_vectors(v, texts, pooling) for m, v in models.items()}
    written = []
    for method in methods:
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
        for ax, (model_name, vec) in zip(axes[0], vectors.items()):
            xy = project(vec, method, seed)
            start = 0
            for i, (group, n) in enumerate(zip(names, sizes)):
                ax.scatter(xy[start:start + n, 0], xy[start:start + n, 1], s=6, alpha=0.6, color=f"C{i}", label=group)
                start += n
            ax.set_title(f"{model_name} ({method.upper()}, {pooling})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(fontsize=8, markerscale=2)
        fig.tight_layout()
        path = out / f"representations-{method}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def representation_groups(data: TextDataset, trigger: Trigger, target: int, split: Callable[[str, Any], str], *,
                          samples: int = 300, seed: int = 0) -> dict[str, list[str]]:
    """The picture's texts: `samples` non-target texts of `data` drawn with `seed`, as they are ("clean"), each
    word-split by `split(text, rng)` ("token-split": MBTSAD's splitting) and with the trigger ("triggered")."""
    pool = [t for t, y in zip(data.texts, data.labels) if y != target]
    rng = np.random.default_rng(seed)
    texts = [pool[i] for i in rng.permutation(len(pool))[:samples]]
    return {"clean": texts, "token-split": [split(t, rng) for t in texts], "triggered": [trigger(t) for t in texts]}


class PictureOptions(BaseModel):
    """What `detrigger plot representations` is given besides the trigger: the models, the texts, where the figures
    go, how many texts per group and the sentence vector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field(description="model folders (e.g. the victim, an MBTSAD teacher, the repaired "
                                    "model)", json_schema_extra=POSITIONAL)
    data: str = Field(description="texts: a built-in corpus (its test split) or a file")
    out: str = Field(description="folder for representations-pca.png and representations-tsne.png")
    samples: int = Field(300, description="non-target texts per group")
    pooling: Pooling = Field("cls", description="sentence vector")


def draw_picture(models: Mapping[str, Victim], data: TextDataset, trigger: Trigger | None, target: int,
                 split: Callable[[str, Any], str], options: PictureOptions, seed: int = 0) -> list[Path]:
    """The picture of `options.samples` non-target texts of `data` (`representation_groups`: clean, token-split by
    `split`, triggered) under each model, written into `options.out`; returns the files written."""
    if trigger is None:
        raise DetriggerError("give --trigger-word or --trigger-sentence (the first model has no attack card)")
    groups = representation_groups(data, trigger, target, split, samples=options.samples, seed=seed)
    return plot_representations(models, groups, options.out, pooling=options.pooling, seed=seed)
