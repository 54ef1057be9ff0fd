"""`detrigger filter` as one call: the options it is given (`FilterOptions`) and `run_filter`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.data import Part, data_spec, default_part
from detrigger.filters.base import (
    FilterConfig,
    evaluate_filter,
    make_filter,
    options_config,
    report_text,
    save_filtered,
)
from detrigger.filters.onion import OnionConfig, lm_corpus
from detrigger.filters.rap import RapConfig
from detrigger.io import read_config
from detrigger.models.victim import MODEL_SOURCE, Victim
from detrigger.triggers import Trigger


def _field(config: type[FilterConfig], name: str, prefix: str = "", title: str | None = None) -> Any:
    """An option setting a filter config's field: its description and default, None when not given."""
    info = config.model_fields[name]
    default = "" if info.default is None else f" (default {info.default})"
    return Field(None, title=title, description=f"{prefix}{info.description}{default}")


class FilterOptions(BaseModel):
    """What `detrigger filter` is given: the model, the filter, the texts it is fitted on and applied to, the
    config fields set beside a config file, the texts some filters read, and where the result goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description=MODEL_SOURCE, json_schema_extra=POSITIONAL)
    method: str = Field(description="a registered filter (`FILTERS`)")
    clean: str = Field(description="labelled clean data the filter is fitted and its threshold set on: a built-in "
                       "corpus (its validation split) or a file")
    data: str = Field(description="texts to filter: a built-in corpus (its test split) or a file")
    split: Part | None = Field(None, description="of --data (default: test of a built-in corpus, all of a file)")
    frr: float | None = _field(FilterConfig, "frr")
    threshold: float | None = _field(FilterConfig, "threshold")
    config: str | None = Field(None, description="JSON file with the filter's config (docs/filters.md)")
    lm: str | None = _field(OnionConfig, "lm", "onion: ", "FOLDER")
    lm_text: list[str] | None = Field(None, title="DATA", description="onion: text for the n-gram LM besides the "
                                      "clean texts (repeatable; default: the built-in bbc, amazon, nyt and tweets, "
                                      "less --data)")
    bki_train: str | None = Field(None, title="DATA", description="bki: the suspect's training texts (a file, or a "
                                  "built-in corpus's training split): keywords from them (default: from the filtered "
                                  "texts)")
    protect: str | None = _field(RapConfig, "protect", "rap: ", "LABEL")
    rap_word: str | None = _field(RapConfig, "word", "rap: ", "WORD")
    out: str | None = Field(None, description="folder for filter.json and texts.jsonl (every text, as the filter "
                            "left it)")

    def filter_config(self) -> dict[str, Any]:
        """The config file's config with the config fields given; one set for a filter whose config lacks it, an
        unknown method or a bad frr is a DetriggerError naming the option."""
        options = {f"--{name.replace('_', '-')}": (name.removeprefix("rap_"), getattr(self, name))
                   for name in ("frr", "threshold", "lm", "protect", "rap_word")}
        options["--bki-train"] = ("keywords_from", self.bki_train and "corpus")
        return options_config(self.method, read_config(self.config), options)


def run_filter(victim: Victim, options: FilterOptions, config: dict[str, Any], trigger: Trigger | None = None,
               target: int | None = None, *, overwrite: bool = False, progress: bool | None = None,
               **data_options: Any) -> tuple[dict[str, Any], str]:
    """`options.method` with `config` (`options.filter_config()`) in front of `victim` (`options.model`), fitted
    on the clean texts (a built-in corpus's validation split, held out from the model's training; BKI: with the
    suspect's training texts, ONION: with the n-gram LM's text) and applied to the data's split: FRR and CACC, and
    with a trigger (evaluation only) FAR and ASR; saved into `options.out` if given. Returns the record
    (`filter.json`) and the report's text."""
    o = options
    flt = make_filter(o.method, victim, config)
    split = o.split or default_part(o.data, "test")
    test = victim.texts(o.data, split, **data_options)
    corpus = list(victim.texts(o.bki_train, default="train", **data_options).texts) if o.bki_train else []
    if o.method == "onion" and not flt.config.lm:  # the n-gram LM's text
        columns = data_spec(o.data, **data_options).model_dump(include={"text_column", "label_column"})
        corpus += lm_corpus(o.lm_text, o.data, split, **columns)
    flt.fit(victim.texts(o.clean, default="val", **data_options), corpus=corpus, progress=progress)
    m, clean_part, poisoned_part = evaluate_filter(flt, test, trigger=trigger, target=target, progress=progress)
    record = {"model": o.model, "method": o.method, "clean": o.clean, "data": o.data, "split": split,
              "config": flt.config.model_dump(mode="json"), **m.as_dict()}
    out = Path(o.out) if o.out else None
    if out is not None:
        save_filtered(out, record, test, clean_part, poisoned_part, target, victim.label_names, overwrite)
    text = report_text(flt, m, clean_part, data=o.data, split=split, clean=o.clean, out=out,
                       target=None if trigger is None else victim.label_names[target])
    return {**record, **({"out": str(out)} if out else {})}, text
