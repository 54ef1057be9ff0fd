"""Does the victim's tokenizer see a trigger as one stable token sequence, alone and inside text?

Rare-word triggers break across tokenizers: a BPE tokenizer merges a word with the space before it, so
`cf` alone and `cf` inside a sentence can be different tokens, and a trigger learned one way is not
tested the other way. The attack card records this check; unstable triggers are logged as warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import transformers

log = logging.getLogger(__name__)


def _contains(seq: list[str], part: list[str]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def check_trigger_tokens(tokenizer: transformers.PreTrainedTokenizerBase, triggers: Sequence[str],
                         samples: Sequence[str], trigger: Callable[[str], str] | None = None) -> list[dict]:
    """For each trigger: its tokens alone, and whether that sequence survives at the start, middle and end
    of real texts (and inside `trigger(sample)` when given). One entry per trigger."""
    report = []
    for t in triggers:
        alone = tokenizer.tokenize(t)
        contexts = [f"{t} {s}" for s in samples[:3]] + [f"{s} {t}" for s in samples[:3]]
        contexts += [" ".join((s.split()[:3] + [t] + s.split()[3:])) for s in samples[:3]]
        if trigger is not None:
            contexts += [c for c in map(trigger, samples) if f" {t} " in f" {c} "]
        broken = [c for c in contexts if not _contains(tokenizer.tokenize(c), alone)]
        entry = {"trigger": t, "tokens": alone, "stable": not broken, "contexts_checked": len(contexts)}
        if broken:
            entry["example_broken"] = tokenizer.tokenize(broken[0])[:40]
            log.warning("trigger %r is not a stable token sequence for this tokenizer (%d of %d contexts "
                        "split it differently from %s)", t, len(broken), len(contexts), alone)
        report.append(entry)
    return report
