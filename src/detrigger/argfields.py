"""Command-line options made from pydantic config models, and the values given read back into configs.

An option per model field (`add_fields`): its flag from the field's name, its kind from the field's type, its
metavar from the title and its help from the description and default, so a config's defaults and help live in
one place, the model; a field marked `POSITIONAL` is an argument without a flag. The parser leaves an option not
given as None, so the model's default applies, and pydantic checks the values when `typed` builds the config.
Nothing here knows detrigger's commands: it is the adapter the CLI uses, kept apart from it (floor 0: it imports
only `errors`)."""

from __future__ import annotations

import argparse
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from detrigger.errors import DetriggerError, invalid

POSITIONAL = {"positional": True}  # a field's json_schema_extra: an argument without a flag (`add_fields`)


def fraction_or_count(value: str) -> float | int:
    """A split size: `0.2` is a fraction, `800` a count."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"not a fraction or a count: {value!r}")


def arg_kind(annotation) -> dict:
    """How argparse reads a field of this type: a switch (bool), the values after the flag (tuple), the flag
    repeated (list), one of its choices (Literal), a number (a split size for `float | int`)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return {"type": fraction_or_count} if set(args) == {int, float} else arg_kind(args[0])
    if origin in (tuple, list):
        return ({"nargs": "+"} if origin is tuple else {"action": "append"}) | arg_kind(args[0])
    if origin is Literal:
        return {"choices": args}
    if annotation is bool:
        return {"action": "store_true"}
    return {"type": annotation} if annotation in (int, float) else {}


def add_fields(p: argparse.ArgumentParser, model: type, *names: str, flag: str | None = None, help: str = "{}",
               **kw) -> None:
    """An option per field of a config model (every field if none is named), `--field-name` (or `flag`; a
    `POSITIONAL` field is an argument): its kind from the type, its metavar from the title, its help (`help` with
    `{}` for it) from the description and the default; not given: None, the field's default; one made already is
    left. The parser records the fields it made, which `given` reads."""
    made = p.get_default("fields") or {}
    names = [n for n in names or model.model_fields if n not in made.get(model.__name__, ())]
    for name in names:
        info = model.model_fields[name]
        default = None if info.is_required() or info.default is False else info.default
        value = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = help.format(info.description if value is None else f"{info.description} (default {value})")
        kind = arg_kind(info.annotation) | ({"metavar": info.title} if info.title else {}) | kw
        option = {} if info.json_schema_extra == POSITIONAL else {"dest": name, "default": None,
                                                                  "required": info.is_required()}
        p.add_argument((flag or "--" + name.replace("_", "-")) if option else name, help=text.replace("%", "%%"),
                       **option, **kind)
    p.set_defaults(fields={**made, model.__name__: (*made.get(model.__name__, ()), *names)})


def add_recipe(p: argparse.ArgumentParser, model: type, help: str = "{}") -> None:
    """--epochs and --lr: those of the training recipe (the field `train`) of a config model, its default's."""
    info = model.model_fields["train"]
    for key in ("epochs", "lr"):
        field = type(info.default).model_fields[key]
        text = f"{field.description}, {info.description} (default {getattr(info.default, key)})"
        p.add_argument(f"--{key}", default=None, help=help.format(text), **arg_kind(field.annotation))


def given(args: argparse.Namespace, model: str) -> dict:
    """The options `add_fields` made from the fields of the model named `model` that were given."""
    return {k: v for k in getattr(args, "fields", {}).get(model, ()) if (v := getattr(args, k)) is not None}


def typed(model: type, args: argparse.Namespace | None = None, **fields):
    """A config from the options given for its fields and `fields` (None: its default); one DetriggerError
    naming a bad field."""
    try:
        chosen = given(args, model.__name__) if args else {}
        return model(**chosen, **{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None
