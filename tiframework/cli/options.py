"""Command-line options built from the typed config models, so a default, a range or a help
text lives in one place (the pydantic field) and argparse never copies it by hand.

    add_model_options(parser, TagOptions)             # --general-threshold P, --no-escape, ...
    options = model_from_args(TagOptions, args)       # validated; a bad value names its --option
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tiframework.data.images import split_tags
from tiframework.errors import UserError


def flag(field_name: str, flags: dict[str, str] | None = None) -> str:
    return (flags or {}).get(field_name) or "--" + field_name.replace("_", "-")


def _dest(field_name: str) -> str:
    return f"opt_{field_name}"


def _plain(annotation: Any) -> Any:
    """`int | None` -> int; other annotations unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel], *,
                      flags: dict[str, str] | None = None, exclude: tuple[str, ...] = (),
                      required: tuple[str, ...] = ()) -> None:
    """One option per field of `model`: booleans become `--x` (default off) or `--no-x`
    (default on), Literals get choices, lists and tuples of strings take repeatable
    comma-separated values. Help is the field's description plus its default; a field in
    `required` has no default on the command line."""
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        default = field.get_default(call_default_factory=True)
        text = field.description or ""
        ann = _plain(field.annotation)
        dest = _dest(name)
        if ann is bool:
            option = flag(name, flags) if not default else "--no-" + name.replace("_", "-")
            parser.add_argument(option, dest=dest, action="store_true" if not default else "store_false",
                                default=default, help=text if not default else f"turn off: {text}")
        elif get_origin(ann) is Literal:
            choices = get_args(ann)
            parser.add_argument(flag(name, flags), dest=dest, choices=choices, default=default,
                                help=f"{text} (default: {default})")
        elif get_origin(ann) in (list, tuple):
            parser.add_argument(flag(name, flags), dest=dest, action="append", default=None, metavar="ITEMS",
                                help=f"{text} (comma-separated, repeatable)")
        else:
            metavar = {int: "N", float: "X"}.get(ann) or name.upper().rsplit("_", 1)[-1]
            kind = ann if ann in (int, float) else str
            if name in required:
                parser.add_argument(flag(name, flags), dest=dest, type=kind, required=True, metavar=metavar,
                                    help=text)
            else:
                parser.add_argument(flag(name, flags), dest=dest, type=kind, default=default, metavar=metavar,
                                    help=f"{text} (default: {default})" if default not in (None, "") else text)


def model_from_args(model: type[BaseModel], args: argparse.Namespace, *,
                    flags: dict[str, str] | None = None, **fixed: Any) -> Any:
    """Build `model` from the options `add_model_options` added (plus `fixed` values)."""
    values: dict[str, Any] = dict(fixed)
    for name, field in model.model_fields.items():
        dest = _dest(name)
        if name in values or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if get_origin(_plain(field.annotation)) in (list, tuple):
            value = [t for v in value or [] for t in split_tags(v)]
        values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as err:
        e = err.errors()[0]
        field_name = str(e["loc"][0]) if e["loc"] else ""
        raise UserError(f"{flag(field_name, flags)}: {e['msg'].removeprefix('Value error, ')}") from None
