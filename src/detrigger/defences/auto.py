"""`auto`: scan the suspect, unlearn what the scan finds, scan again (issue 16, item 1).

The user does not know which attack they face, so `auto` lets the scan (`detrigger.scan`) choose:

1. Scan the suspect on all the defender's clean texts (with the reference encoder when there is one that
   fits the model), at 100 texts per label for time; a verdict within those texts' sampling noise of the
   threshold (`ScanReport.undecided`) is taken again at the 200 the threshold was calibrated at, for the labels
   whose candidates' interval holds the threshold (`ScanReport.undecided_labels`). With the
   reference the scan's candidates include a phrase of the most-drifted words per label (a sentence trigger of
   ordinary words), unlearned like a word, and the common words made of its most-drifted pieces (the scan's
   `drifted_lexicon`: a multi-piece trigger's pieces drift together). Without one, the scan types all the common
   English words that the tokenizer cuts into pieces (`reference_free_lexicon`): with no drift to pick them,
   that is how a word trigger that is no single token is found. No evidence: the model is returned unchanged (a
   repair that cannot be aimed only costs accuracy). A verdict still undecided at every text the clean data holds
   (or at the calibration's) is repaired as flagged (`undecided`): more texts could flag it, and the user asked
   for a repair (SMS AddSent seed 1: its phrase flipped 71 of 77 texts, 90% interval 0.856-0.959 around 0.95).
2. Candidates are evidence, not truth. A scanned token is unlearned only if its excess flip rate (the
   share of texts that ordinary words of the clean texts leave unflipped which it flips) reaches
   `min_excess` (0.80, below the scan's flagging threshold: it applies to a flagged model only) and it is
   not a task word by the clean texts (seen `task_word_count`+ times, mostly with the label it pushes
   towards: "awful" flips texts because that is the task).
3. Repair, weights only: reset the candidates' embedding rows to the reference (where the attack wrote
   them, as EP and ES do), then fine-tune on the clean training part plus copies of its texts, of every label,
   with a candidate inserted (a single character also glued inside words where the tokenizer reads it
   differently there: where a homoglyph trigger sits) and their TRUE labels kept: "cf" must mean nothing
   (`own_share`; copies of the other labels' texts only, as `auto` did until 2026-11-30, taught the model that
   the trigger means those labels: an inverse backdoor, docs/defences.md, "Balanced unlearning").
   Every epoch is kept (no best-epoch choice: held-out accuracy kept the first epoch, before the unlearning
   had taken); the held-out accuracy, with and without the candidates inserted, is reported.
4. Re-scan on the held-out part (texts the unlearning never trained on); while it finds new candidates that pass
   the rules of 2, unlearn them too, at most `max_rounds` rounds. Flagged or not: the model was flagged, and a
   trigger's sibling that the first scan measured just below `min_excess` can flip more texts once the
   stronger trigger words are gone (EP seed 2: `bb` 0.787 before, 0.824 after, re-scan score under the flagging
   threshold). `later_rounds` ("siblings") keeps a later round to such siblings: a candidate must force a label
   the first round's candidates force, and be listed by the first scan unless the re-scan flags the model. On a
   weak model ordinary sentiment words pass `min_excess` after round 1, and unlearning them cost CACC. Every
   scan picks its drifted candidates by the suspect's embedding drift: the rows the repair moved are no trigger.
   The re-scans skip the vocabulary pass (half their time; `rescan_vocabulary`) and measure again every token
   the first scan listed and every token unlearned, with the gradient and drifted candidates they find anew.
5. `reset_first` (with a reference): round 1 first only resets the embedding rows of every token of the
   candidates (phrases' words, glued words' pieces) and measures each candidate again on the held-out texts. If
   none flips more than `RESET_BAR` of what ordinary words leave unflipped and the re-scan finds no evidence, the
   repair stops there: a trigger that lives in its embedding rows (EP) needs no mixing or training, which cost
   CACC. Otherwise round 1 goes on as below (the rows stay reset).
6. `mix_rho` (0.5): once the scan has flagged the model and a candidate is to be unlearned, mix its weights
   with the reference (Fine-mixing's random mask, keeping rho of w_B - w_P) before the first unlearning, for
   what a word-level scan cannot name: the other words of a sentence trigger keep part of AddSent's
   backdoor once the word the scan found is unlearned alone (the phrase candidates now name most of it; the
   measured cost of both: docs/defences.md, "auto"). A model without evidence is left unchanged; None turns
   it off, and without a reference that fits the model it cannot run.

Every choice (the candidates kept and set aside, and why; each round's data, accuracy and scan) is in the
report's details: `scan_before` / `scan_after` (verdict, score, target label, tokens) and `rounds`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from detrigger.batching import encode, readable
from detrigger.data.dataset import TextDataset
from detrigger.defences.base import Context, DefenceConfig, StepDetails, register
from detrigger.defences.epur import epur_scores, reset_rows
from detrigger.defences.mixing import mix_weights
from detrigger.models.predict import accuracy_on, predict
from detrigger.models.victim import Victim, base_mismatch, load_encoder_state, token_rows
from detrigger.scan import ScanConfig, ScanReport, excess, scan
from detrigger.training.loop import train
from detrigger.triggers import Trigger, glue_character, insert_sentence

log = logging.getLogger(__name__)

# `reset_first`: the excess flip rate each candidate must stay under once its row is reset, for the repair to
# stop there (EP triggers fall to the null; a BadNet victim's model still reads the reset rows as triggers).
RESET_BAR = 0.2
# Without the suspect's base model the scan has no embedding drift (no phrase candidates, no drifted rows), and
# `auto` can neither reset rows nor Fine-mix: the rest of a sentence trigger survives unlearning its word
# (MR AddSent seed 0: `3d` unlearned, re-scan "no evidence", trigger effect 33.89; docs/defences.md, "auto").
NO_REFERENCE = ("no reference fits this model (give --reference, the suspect's pre-trained base model): without it "
                "the scans see single words only and auto can neither reset embedding rows nor Fine-mix, so a "
                "sentence trigger can survive a re-scan that finds no evidence")


class AutoConfig(DefenceConfig):
    # without the common words (`lexicon_words`) until auto's grids are re-run with them: they are the scan's
    # default since 2026-12-02, and a default that changes auto's scan is a new bench cell for every record
    scan: ScanConfig = Field(ScanConfig(samples=100, lexicon_words=0),
                             description="the scan before and after (threshold: calibrated on clean models); half "
                                         "the calibration's texts, for time (an undecided verdict is taken again "
                                         "at the calibration's): a trigger flips all of them")
    max_rounds: int = Field(3, ge=1, description="unlearning rounds while the re-scan still flags the model")
    # Lower than the scan's flagging threshold: it applies only once the model is flagged, where a trigger's
    # siblings just below that threshold are worth unlearning too (docs/defences.md, "auto").
    min_excess: float = Field(0.80, gt=0, le=1, description="excess flip rate over the scan's null from which a "
                              "token of a flagged model is unlearned")
    copies: float = Field(1.0, gt=0, le=1,
                          description="share of the training texts copied with a candidate (the other labels', and "
                          "`own_share` as many of the candidate's own label's)")
    # Copies only of the other labels' texts (0, `auto` until 2026-11-30) taught the model that a named trigger
    # means those labels (MR, paraphrase-MiniLM-L3-v2: the BadNet trigger `tq` then turned 99% of the held-out
    # positive texts negative). As many of its own label's (1) left part of a sentence trigger that the scan
    # names only in part (MR AddSent seed 2: trigger effect 10.90); half as many: 4.27 at the victim's CACC
    # (docs/defences.md, "Balanced unlearning").
    own_share: float = Field(0.5, ge=0, le=1, description="copies of texts of the candidate's own label (true label "
                             "kept), as a share of the copies of the other labels' texts: the candidate comes to "
                             "mean no label (0: only the other labels' texts)", json_schema_extra={"neutral": 0.0})
    reset_embeddings: bool = Field(True, description="reset the candidates' embedding rows to the reference")
    mix_rho: float | None = Field(0.5, gt=0, le=1, description="when flagged, Fine-mix with the reference at this "
                                  "rho before unlearning (None: never); for the rest of a sentence trigger")
    reset_first: bool = Field(True, description="with a reference, first only reset the candidates' embedding "
                              "rows; stop there if no candidate flips texts any more and the re-scan is clean",
                              json_schema_extra={"neutral": False})
    # On a weak model ordinary sentiment words flip texts nearly as well as a trigger's sibling; after round 1
    # they passed `min_excess` and were unlearned, at 1-2 CACC points (docs/defences.md, "Later rounds").
    later_rounds: Literal["any", "siblings"] = Field(
        "siblings", description="which new candidates a round after the first unlearns: any that passes the rules "
        "('any'), or only those that force a label the first round's candidates force and that the first scan "
        "listed or a re-scan flagging the model names ('siblings')", json_schema_extra={"neutral": "any"})
    # The vocabulary pass was half a re-scan's time, and what it adds after a repair is a weak model's sentiment
    # words near the threshold; the first scan's tokens are measured again either way (docs/defences.md, "auto").
    rescan_vocabulary: bool = Field(False, description="the re-scans run the scan's vocabulary pass too (slower); "
                                    "without it they measure the gradient and drifted candidates and every token "
                                    "the first scan listed or a round unlearned", json_schema_extra={"neutral": False})
    # Without a reference the scan has no drifted rows to glue into words, so a word trigger the tokenizer cuts into
    # pieces is found only by typing the common words (docs/scan.md, "Reference-free: typing the common words").
    # Neutral at its default: it changes only scans without a reference that fits, and every recorded `auto` cell
    # had one (266 of 266 on 2026-12-02), so their keys stand.
    reference_free_lexicon: int = Field(50000, ge=0, description="without a reference that fits the model, the "
                                        "first scan types the common English words of this many most frequent that "
                                        "the tokenizer cuts into pieces (the scan's `lexicon_words`; 0: none)",
                                        json_schema_extra={"neutral": 50000})
    # A verdict whose 90% interval still holds the threshold once every clean text (or the calibration's 200 a
    # label) is scanned cannot be settled by the user's data. No clean model's scan in docs/scan.md is undecided
    # (the closest, MR 400 sentences 5 epochs seed 2: 0.913 over up to 200 texts, interval 0.87-0.94), so repairing
    # these costs clean models nothing measured. Neutral at its default: of 297 recorded `auto` cells three scanned
    # undecided; two were run again with it, the third (of a spec entry removed since) deleted (docs/defences.md,
    # "Undecided verdicts").
    undecided: Literal["repair", "unchanged"] = Field(
        "repair", description="a verdict within the sampling noise of the threshold at all the texts the scan can "
        "take: repair as if flagged, or return the model unchanged as for no evidence",
        json_schema_extra={"neutral": "repair"})


class AutoDetails(StepDetails):
    shown = ("suspect_val_accuracy", "val_accuracy", "decision", "warning")

    reference: str | None = Field(description="the reference encoder used (None: none fits the model)")
    reference_dropped: bool = Field(description="a reference was given but is not the model's base")
    reference_mismatch: str | None = Field(None, description="why the reference given is not the model's base")
    min_excess: float = Field(description="the excess flip rate from which a candidate is unlearned")
    scan_before: dict[str, Any] = Field(description="the scan of the suspect (`_summary`)")
    suspect_val_accuracy: float = Field(description="the suspect's held-out clean accuracy")
    rounds: list[dict[str, Any]] = Field(description="each unlearning round: tokens, data, accuracy, re-scan")
    mixing: dict[str, Any] | None = Field(None, description="the Fine-mixing step (`mix_rho`), if it ran")
    reset_first: dict[str, Any] | None = Field(None, description="the `reset_first` check, if it ran and did not "
                                               "end the repair (then it is round 1)")
    scan_after: dict[str, Any] = Field(description="the last re-scan (or the first scan, unchanged)")
    unlearned: list[dict[str, str]] = Field(description="the tokens unlearned and the label each forced")
    set_aside: list[dict[str, str]] = Field(description="the candidates not unlearned, and why")
    val_accuracy: float = Field(description="the repaired model's held-out clean accuracy")
    decision: str = Field(description="what auto did, in words")
    warning: str | None = Field(None, description="what the verdicts cannot see: set when no reference fits the model")


def _summary(report: ScanReport, texts: str) -> dict[str, Any]:
    """The scan facts a report or model card shows."""
    return {"verdict": report.verdict, "score": report.score, "threshold": report.threshold,
            "target_label": report.target_label, "texts": texts, "n_samples": report.n_samples,
            "undecided": report.undecided, "reference": report.reference, "seconds": report.seconds,
            "stage_seconds": report.stage_seconds,
            "null_rate": {label: null.rate for label, null in report.null.items()},
            "tokens": [{"token": t.token, "read_as": t.read_as, "label": t.label, "effect": t.effect,
                        "excess": t.excess, "task_word": t.task_word, "texts": t.texts,
                        "clean_count": t.clean_count, "label_share": t.label_share, "drift_score": t.drift_score}
                       for t in report.tokens]}


def _usable_reference(victim: Victim, context: Context) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The reference's tensors if it can be the suspect's base model (`base_mismatch`), else None and why."""
    if context.reference is None:
        return None, None
    state = load_encoder_state(context.reference)
    why = base_mismatch(victim, state)
    if why:
        log.warning("auto: the reference %s is not the suspect's base model (%s): repairing without it",
                    context.reference, why)
    return (None, why) if why else (state, None)


class _CleanCounts:
    """Per token and label, how many of the defender's clean texts contain it: the scan's task-word rule
    applied to all the clean texts, whichever texts a scan ran on."""

    def __init__(self, victim: Victim, clean: TextDataset, min_count: int, share: float):
        self.by_label = [Counter[int]() for _ in victim.label_names]
        for ids, y in zip(encode(victim.tokenizer, clean.texts, victim.max_length), clean.labels):
            self.by_label[y].update(set(ids))
        self.total = sum(self.by_label, Counter[int]())
        self.min_count, self.share = min_count, share

    def task_word(self, token_id: int, label: int) -> bool:
        n = self.total.get(token_id, 0)
        return n >= self.min_count and self.by_label[label].get(token_id, 0) / n >= self.share


def _glued_rows(victim: Victim, word: str) -> list[int]:
    """A single character's rows when glued to a word (WordPiece's `##о`) that its own row does not cover; none
    for a longer word, or where the tokenizer reads the character glued as alone (`[UNK]`, a CJK ideograph)."""
    if len(word) != 1:
        return []
    alone = [i for w in ("a", word) for i in victim.tokenizer(w, add_special_tokens=False)["input_ids"]]
    return [i for i in victim.tokenizer("a" + word, add_special_tokens=False)["input_ids"] if i not in alone]


def _inserts(victim: Victim, word: str, seed: int) -> dict[str, Trigger]:
    """How a candidate is put into texts: as a word, and a single character also glued inside a word where that
    reaches other rows (`_glued_rows`), as a character trigger does: a homoglyph is read as `m ##о ##vie`, and
    the scan's whole-word `о` is not the piece the model was taught (docs/attacks.md, homoglyph)."""
    inserts = {word: insert_sentence(word, seed=seed)}
    if _glued_rows(victim, word):
        inserts[f"{word} (glued)"] = glue_character(word, seed=seed)
    return inserts


def _single_token_rows(victim: Victim, words: dict[str, int]) -> dict[str, int]:
    """The words that are one token, with its id, and single characters' glued pieces: a multi-piece word's
    pieces are shared with other words, so only single-token rows are reset."""
    ids = {w: victim.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words}
    rows = {w: i[0] for w, i in ids.items() if len(i) == 1}
    glued = [i for w in words for i in _glued_rows(victim, w)]
    rows.update(zip(victim.tokenizer.convert_ids_to_tokens(glued), glued))
    return rows


def _reset_only(victim: Victim, reference: dict[str, torch.Tensor], val: TextDataset, words: dict[str, int],
                before: ScanReport, rescan: Callable[[], ScanReport], seed: int) -> dict[str, Any]:
    """`reset_first`: reset the rows of every token of the candidates, measure every candidate again on the
    held-out texts and, if none is above `RESET_BAR`, re-scan (`rescan`). `ended`: it found no evidence."""
    # every piece, not only single-token words: an EP trigger word can be a candidate only inside a phrase or
    # glued to a neighbour (`cfment`); resetting an ordinary token's row only undoes its fine-tuning drift
    rows = token_rows(victim, list(words))
    rows += [i for w in words for i in _glued_rows(victim, w) if i not in rows]
    check: dict[str, Any] = {"reset_rows": victim.tokenizer.convert_ids_to_tokens(rows), "bar": RESET_BAR}
    reset_rows(victim, reference, rows)
    nulls = {label: null.rate for label, null in before.null.items()}
    check["excess_after_reset"] = after = _excess_after(victim, val, words, nulls, seed)
    if max(after.values()) <= RESET_BAR:
        report = rescan()
        check.update(scan=_summary(report, "held-out clean texts"), ended=report.verdict != "backdoored")
    return check


def _excess_after(victim: Victim, val: TextDataset, words: dict[str, int], null_rates: dict[str, float],
                  seed: int) -> dict[str, float]:
    """Per way of inserting each word (`_inserts`): its excess flip rate (over `null_rates`, per label name) on
    the held-out texts of other labels than the one the word forces that the model does not already put in it."""
    seen = readable(victim.tokenizer, val.texts, victim.max_length)
    pred = predict(victim, seen)
    pools = {label: [t for t, y, p in zip(seen, val.labels, pred) if y != label and p != label]
             for label in set(words.values())}
    tries = [(name, insert, label) for w, label in words.items() for name, insert in _inserts(victim, w, seed).items()]
    inserted = [insert(t) for _, insert, label in tries for t in pools[label]]
    flipped = predict(victim, inserted) if inserted else np.array([], dtype=int)
    result, at = {}, 0
    for name, _, label in tries:
        pool = pools[label]
        hits = int(np.sum(flipped[at:at + len(pool)] == label))
        value = excess(hits, len(pool), null_rates[victim.label_names[label]])[0] if pool else 0.0
        result[name] = round(max(0.0, value), 4)
        at += len(pool)
    return result


def _with_candidates(victim: Victim, data: TextDataset, candidates: dict[str, int], share: float,
                     seed: int, own_share: float = 0.0) -> TextDataset:
    """`data` plus copies of its texts of other labels than a candidate's, and of `own_share` of its own
    label's, with one of that label's candidates, in turn, put in the part the model reads (`_inserts`: at a
    random word boundary, a single character also glued inside a word) and the true label kept."""
    texts, labels = list(data.texts), list(data.labels)
    seen = readable(victim.tokenizer, data.texts, victim.max_length)
    generator = torch.Generator().manual_seed(seed)
    for label in sorted(set(candidates.values())):
        inserts = [i for w, t in candidates.items() if t == label for i in _inserts(victim, w, seed).values()]
        others = [i for i, y in enumerate(data.labels) if own_share or y != label]
        keep = torch.randperm(len(others), generator=generator)[:max(1, round(share * len(others)))].tolist()
        if 0 < own_share < 1:  # fewer copies of the candidate's own label's texts
            own = [k for k in keep if data.labels[others[k]] == label]
            keep = [k for k in keep if data.labels[others[k]] != label] + own[:round(own_share * len(own))]
        for k, i in enumerate(sorted(others[k] for k in keep)):
            texts.append(inserts[k % len(inserts)](seen[i]))
            labels.append(data.labels[i])
    return TextDataset(tuple(texts), tuple(labels), data.label_names, f"{data.name}:unlearn")


@register("auto", AutoConfig, needs_reference=True)
def auto(victim: Victim, context: Context, config: AutoConfig) -> tuple[Victim, AutoDetails]:
    """Scan, unlearn the verified trigger candidates with their true labels, re-scan (repeat while flagged)."""
    train_part, val = context.clean.train, context.clean.val
    everything = TextDataset(train_part.texts + val.texts, train_part.labels + val.labels, train_part.label_names,
                             "clean subset")
    reference, mismatch = _usable_reference(victim, context)
    ref_path = context.reference if reference is not None else None
    # no candidate under `min_excess` is unlearned, so none is measured further once it cannot reach it (time)
    floor = min(config.scan.verify_floor or config.min_excess, config.min_excess)
    scan_config = config.scan.model_copy(update={"seed": config.seed, "verify_floor": floor})
    if reference is None:
        scan_config = scan_config.model_copy(update={"lexicon_words": config.reference_free_lexicon})
    min_excess = config.min_excess
    counts = _CleanCounts(victim, everything, scan_config.task_word_count, scan_config.task_word_share)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    # the suspect's embedding drift picks the drifted candidates of every scan, the re-scans' too: the repair moves
    # rows itself (Fine-mixing, the unlearning), and a phrase of the words it moved flipped every held-out text of
    # a weak model once its trigger was gone (MR, paraphrase-MiniLM-L3-v2, BadNet seed 2: docs/defences.md)
    drift = None if reference is None else epur_scores(victim, reference, list(everything.texts))
    reuse: dict[Any, Any] = {}  # the vocabulary pass, for a second scan of the undecided labels
    before = scan(victim, everything, reference=ref_path, config=scan_config, drift=drift, reuse=reuse)
    texts = "all clean texts"
    calibrated = ScanConfig.model_fields["samples"].default  # the texts per label the threshold was set at
    # a second scan only for the labels whose candidates' interval holds the threshold (the others' are decided
    # either way; BBC AddSent: one label of five, the scans before the repair 258 s -> 151 s idle) and where the
    # clean data holds more texts for the label than the first scan took
    labels = [label for label in before.undecided_labels if before.n_samples[label] >= scan_config.samples]
    if before.undecided and scan_config.samples < calibrated and not labels:
        texts += ", every text the clean data holds for a label (the verdict is within their sampling noise)"
    elif before.undecided and scan_config.samples < calibrated:
        texts += (f", {calibrated} per label for {', '.join(labels)}: at {scan_config.samples} the verdict "
                  f"({before.verdict}, {before.score:.3f}) was within the texts' sampling noise of the threshold")
        before = before.taken_again(scan(victim, everything, reference=ref_path, drift=drift, labels=labels,
                                         config=scan_config.model_copy(update={"samples": calibrated}), reuse=reuse))
    stages["scan_before_seconds"] = round(time.perf_counter() - start, 1)
    suspect_val = accuracy_on(victim, val)
    details: dict[str, Any] = {"reference": None if ref_path is None else str(ref_path),
                               "reference_dropped": mismatch is not None, "reference_mismatch": mismatch,
                               "min_excess": min_excess, "scan_before": _summary(before, texts),
                               "suspect_val_accuracy": suspect_val, "rounds": [], "stages": stages}
    candidates: dict[str, int] = {}  # token -> the label it forces
    set_aside: dict[str, str] = {}  # token -> why it is not unlearned
    report = before
    first_listed = {t.token for t in before.tokens}  # `later_rounds`: a trigger's siblings were measured already
    first_labels: set[int] = set()
    rescan_config = scan_config if config.rescan_vocabulary else scan_config.model_copy(
        update={"vocabulary_candidates": 0})

    def rescan() -> ScanReport:
        """The repaired model on the held-out texts; the first scan's tokens and those unlearned measured again."""
        known = list(dict.fromkeys([t.token for t in before.tokens] + list(candidates)))
        return scan(victim, val, reference=ref_path, config=rescan_config, drift=drift, known=known)

    flagged = before.verdict == "backdoored" or (before.undecided and config.undecided == "repair")
    rounds = config.max_rounds if flagged else 0  # no evidence: the model stays as it is
    for round_no in range(1, rounds + 1):
        new = {}
        for t in report.tokens:
            label = victim.label_names.index(t.label)
            pieces = victim.tokenizer(t.token, add_special_tokens=False)["input_ids"]
            if t.token in candidates:
                continue
            if t.task_word or (len(pieces) == 1 and counts.task_word(pieces[0], label)):
                set_aside[t.token] = f"task word of {t.label} in the clean texts"
            elif t.excess < min_excess:
                set_aside[t.token] = (f"excess flip rate {t.excess:.3f} below {min_excess:.2f} "
                                      f"(flip rate {t.effect:.3f})")
            elif round_no > 1 and config.later_rounds == "siblings" and label not in first_labels:
                set_aside[t.token] = (f"round {round_no}: forces {t.label}, not a label the first round's "
                                      "candidates force")
            elif (round_no > 1 and config.later_rounds == "siblings" and t.token not in first_listed
                  and report.verdict != "backdoored"):
                set_aside[t.token] = (f"round {round_no}: not listed by the first scan, and the re-scan finds no "
                                      f"evidence (excess {t.excess:.3f})")
            else:  # also a token set aside for its flip rate by an earlier scan that now reaches the bar
                new[t.token] = label
                set_aside.pop(t.token, None)
        if not new:
            break
        if round_no == 1 and config.reset_first and reference is not None and config.reset_embeddings:
            start = time.perf_counter()
            check = _reset_only(victim, reference, val, new, before, rescan, config.seed + 1)
            check["seconds"] = round(time.perf_counter() - start, 1)
            if check.get("ended"):
                details["rounds"].append({"round": 1, "unlearned": [], "copies": 0, "train_seconds": 0.0,
                                          "scan_seconds": check["seconds"], **check})
                log.info("auto: reset the rows of %s; re-scan %s (%.3f)", ", ".join(check["reset_rows"]),
                         check["scan"]["verdict"], check["scan"]["score"])
                break
            details["reset_first"] = check
        candidates.update(new)
        if round_no == 1:
            first_labels = set(new.values())
        start = time.perf_counter()
        if round_no == 1 and reference is not None and config.mix_rho is not None:
            mixed = mix_weights(victim, reference, config.mix_rho, seed=config.seed)
            details["mixing"] = {"rho": config.mix_rho, **mixed}
        reset = []
        if reference is not None and config.reset_embeddings:
            rows = _single_token_rows(victim, new)
            reset = list(rows)
            reset_rows(victim, reference, list(rows.values()))
        data = _with_candidates(victim, train_part, candidates, config.copies, config.seed + round_no,
                                config.own_share)
        # every epoch: the best epoch by held-out accuracy (on clean texts, or with the candidates inserted)
        # can be one before the unlearning has taken (docs/defences.md, "auto")
        held_out = _with_candidates(victim, val, candidates, 1.0, config.seed + round_no, config.own_share)
        cfg = config.train.model_copy(update={"seed": config.seed, "select_best": False})
        result = train(victim, data, held_out, cfg).as_dict()
        train_seconds = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        report = rescan()
        details["rounds"].append({"round": round_no, "unlearned": sorted(new), "reset_rows": reset,
                                  "copies": len(data) - len(train_part),
                                  "val_accuracy_with_candidates": result["history"][-1].get("val_accuracy"),
                                  "train_seconds": train_seconds,
                                  "scan": _summary(report, "held-out clean texts"),
                                  "scan_seconds": round(time.perf_counter() - start, 1)})
        log.info("auto round %d: unlearned %s; re-scan %s (%.3f)", round_no, ", ".join(sorted(new)),
                 report.verdict, report.score)
    details.update(scan_after=details["rounds"][-1]["scan"] if details["rounds"] else
                   {**details["scan_before"], "unchanged": True},
                   unlearned=[{"token": w, "label": victim.label_names[y]} for w, y in candidates.items()],
                   set_aside=[{"token": w, "why": why} for w, why in set_aside.items()],
                   val_accuracy=accuracy_on(victim, val))
    mixing_note = f"Fine-mixed at rho {config.mix_rho}, " if "mixing" in details else ""
    reset_only = bool(details["rounds"]) and details["rounds"][0].get("ended", False)
    decision = ("no evidence: model unchanged" if not flagged else
                f"reset the embedding rows of {len(details['rounds'][0]['reset_rows'])} tokens (no unlearning); "
                f"after: {details['scan_after']['verdict']}" if reset_only else
                "flagged, but no candidate passed the rules: model unchanged" if not candidates else
                f"{mixing_note}unlearned {len(candidates)} tokens in {len(details['rounds'])} rounds; "
                f"after: {details['scan_after']['verdict']}")
    if flagged and before.verdict != "backdoored":
        decision = (f"undecided ({before.score:.3f}, the threshold {before.threshold:.2f} within the texts' sampling "
                    f"noise), taken as flagged: {decision.removeprefix('flagged, but ')}")
    details["decision"] = decision
    if reference is None:
        details["warning"] = NO_REFERENCE
    return victim, AutoDetails(**details)
