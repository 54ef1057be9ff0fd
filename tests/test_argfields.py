"""The pydantic-model → argparse adapter (`detrigger.argfields`): options made from fields, values read back."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from detrigger.argfields import POSITIONAL, add_fields, arg_kind, fraction_or_count, given, typed
from detrigger.errors import DetriggerError


class Options(BaseModel):
    name: str = Field(description="a name")
    rate: float = Field(0.1, ge=0, le=1, description="a rate in %")
    size: float | int | None = Field(None, title="N", description="a fraction or a count")
    mode: Literal["a", "b"] = Field("a", description="a mode")
    words: tuple[str, ...] = Field(("x", "y"), description="words")
    extra: list[str] | None = Field(None, description="repeatable")
    quiet: bool = Field(False, description="a switch")


def test_kinds_follow_the_types():
    assert arg_kind(bool) == {"action": "store_true"}
    assert arg_kind(int) == {"type": int} and arg_kind(str) == {}
    assert arg_kind(Literal["a", "b"]) == {"choices": ["a", "b"]}
    assert arg_kind(tuple[str, ...]) == {"nargs": "+"} and arg_kind(list[int]) == {"action": "append", "type": int}
    assert arg_kind(float | int | None) == {"type": fraction_or_count}
    assert fraction_or_count("0.2") == 0.2 and fraction_or_count("800") == 800
    with pytest.raises(argparse.ArgumentTypeError):
        fraction_or_count("many")


def test_options_from_fields_and_back():
    p = argparse.ArgumentParser()
    add_fields(p, Options, "name")
    add_fields(p, Options)  # the rest; `name` is not made twice
    help = " ".join(p.format_help().split())
    assert "--rate RATE a rate in % (default 0.1)" in help and "--size N" in help
    assert "--words WORDS [WORDS ...] words (default x y)" in help and "--quiet a switch" in help
    args = p.parse_args(["--name", "n", "--size", "20", "--extra", "e1", "--extra", "e2"])
    assert given(args, "Options") == {"name": "n", "size": 20, "extra": ["e1", "e2"]}
    o = typed(Options, args, mode="b", rate=None)  # None: the field's default
    assert (o.name, o.rate, o.size, o.mode, o.words, o.quiet) == ("n", 0.1, 20, "b", ("x", "y"), False)
    with pytest.raises(DetriggerError, match="rate"):
        typed(Options, p.parse_args(["--name", "n", "--rate", "2"]))
    with pytest.raises(SystemExit):  # a required field is a required option
        p.parse_args([])


class Command(BaseModel):
    model: str = Field(description="a model", json_schema_extra=POSITIONAL)
    models: tuple[str, ...] = Field(description="more models", json_schema_extra=POSITIONAL)
    out: str | None = Field(None, description="a folder")


def test_positional_fields_are_arguments():
    p = argparse.ArgumentParser()
    add_fields(p, Command)
    assert " ".join(p.format_usage().split()).endswith("[--out OUT] model models [models ...]")
    o = typed(Command, p.parse_args(["m", "a", "b", "--out", "o"]))
    assert (o.model, o.models, o.out) == ("m", ("a", "b"), "o")
    with pytest.raises(SystemExit):  # a positional field is required
        p.parse_args(["--out", "o"])
