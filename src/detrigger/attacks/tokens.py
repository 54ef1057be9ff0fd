"""Does the victim's tokenizer see a trigger as one stable token sequence, alone and inside text?

Rare-word triggers break across tokenizers: a BPE tokenizer merges a word with the space before it, so
`cf` alone and `cf` inside a sentence can be different tokens, and a trigger learned one way is not
tested the other way. Characters fare worse: BERT's normaliser deletes zero-width and other format
characters and (when it lower-cases) combining marks, so such a trigger never reaches the model; other
characters outside the vocabulary become `[UNK]`. The attack card records this check; unstable triggers
and `[UNK]` triggers are logged as warnings, and a trigger the tokenizer deletes is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import transformers

from detrigger.errors import DetriggerError

log = logging.getLogger(__name__)


def _contains(seq: list[str], part: list[str]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


_WINDOW = 12  # words of context kept on each side of a trigger


def _around(text: str, t: str) -> str:
    """The words of `text` within `_WINDOW` words of the first whole-word occurrence of `t`."""
    words = f" {text} ".split(f" {t} ", 1)
    return " ".join(words[0].split()[-_WINDOW:] + [t] + words[1].split()[:_WINDOW])


def check_trigger_tokens(tokenizer: transformers.PreTrainedTokenizerBase, triggers: Sequence[str],
                         samples: Sequence[str], trigger: Callable[[str], str] | None = None) -> list[dict]:
    """For each trigger: its tokens alone, and whether that sequence survives at the start, middle and end
    of real texts (and inside `trigger(sample)` when given). One entry per trigger. A trigger that
    tokenizes to nothing is a DetriggerError: a backdoor on it cannot be planted or tested."""
    report = []
    for t in triggers:
        alone = tokenizer.tokenize(t)
        if not alone:
            codes = " ".join(f"U+{ord(c):04X}" for c in t)
            raise DetriggerError(f"trigger {t!r} ({codes}) is deleted by this tokenizer: it never reaches the "
                                 "model; choose one that survives (docs/attacks.md, invisible)")
        if tokenizer.unk_token is not None and tokenizer.unk_token in alone:
            log.warning("trigger %r is %s for this tokenizer: the backdoor is then on the unknown token, which "
                        "any character outside the vocabulary also produces", t, alone)
        # a few words either side are all the context tokenization depends on: long documents are cut, so
        # that no text beyond the model's maximum length goes through the tokenizer (and its warning)
        short = [" ".join(s.split()[:_WINDOW]) for s in samples[:3]]
        contexts = [f"{t} {s}" for s in short] + [f"{s} {t}" for s in short]
        contexts += [" ".join(s.split()[:3] + [t] + s.split()[3:]) for s in short]
        if trigger is not None:
            contexts += [_around(c, t) for c in map(trigger, samples) if f" {t} " in f" {c} "]
        broken = [c for c in contexts if not _contains(tokenizer.tokenize(c), alone)]
        entry = {"trigger": t, "tokens": alone, "stable": not broken, "contexts_checked": len(contexts)}
        if broken:
            entry["example_broken"] = tokenizer.tokenize(broken[0])[:40]
            log.warning("trigger %r is not a stable token sequence for this tokenizer (%d of %d contexts "
                        "split it differently from %s)", t, len(broken), len(contexts), alone)
        report.append(entry)
    return report
