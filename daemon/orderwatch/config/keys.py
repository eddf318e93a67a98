"""What the settings models allow, looked up by a key's location: the keys of a section (for
did-you-mean hints and overrides) and whether a key holds text (so an override keeps it as
written)."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from orderwatch.config.models import Settings
from orderwatch.config.source import Loc

_TEXT_TYPES = (str, SecretStr, Path, type(None))


def allowed_keys(loc: Loc) -> list[str]:
    """The YAML keys of the section at `loc` (empty when it is not a section)."""
    model = _model_at(loc)
    return [] if model is None else [f.alias or n for n, f in model.model_fields.items()]


def unknown_key(loc: Loc) -> str:
    """ "unknown key 'x' (did you mean 'y'?)" for the key at `loc`."""
    near = difflib.get_close_matches(str(loc[-1]), allowed_keys(loc[:-1]), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown key {str(loc[-1])!r}{hint}"


def _field(model: type[BaseModel], key: str | int) -> FieldInfo | None:
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Settings
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = _field(model, part)
        model = None if field is None else _nested_model(field.annotation)
    return model


def section_model(name: str) -> type[BaseModel] | None:
    """The model of a mapping section (runa, polling...), not of a list like webhooks."""
    field = _field(Settings, name)
    ann = None if field is None else field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _nested_model(arg)) is not None:
            return found
    return None


def wants_text(loc: Loc) -> bool:
    model = _model_at(loc[:-1])
    field = None if model is None else _field(model, loc[-1])
    if field is None:
        return False
    kinds = (
        typing.get_args(field.annotation) if _is_union(field.annotation) else (field.annotation,)
    )
    return all(k in _TEXT_TYPES or typing.get_origin(k) is typing.Literal for k in kinds)


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
