"""Strict pydantic models with one-line errors: a typo names the key and lists the valid ones.

Shared by the run config (`ddgan.config`) and the study's grid files (`study.grid`):
`Strict` forbids unknown keys and is frozen; `validate(model, raw, where)` returns the
model or raises `ConfigError("<where>: unknown key 'train.lrr' (valid keys: ...)")`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ddgan.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def section_model(root: type[BaseModel], path: Sequence[str]) -> type[BaseModel] | None:
    """The model of the section at dotted `path` under `root` (None when it is not a section)."""
    model = root
    for name in path:
        field = model.model_fields.get(name)
        if field is None:
            return None
        candidates = getattr(field.annotation, "__args__", (field.annotation,))  # `Section | None`
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def format_error(err: ValidationError, root: type[BaseModel], where: str) -> str:
    """The first error as one line: `<where>: <key>: <message>` or the unknown key and the valid ones."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        section = section_model(root, loc[:-1])
        valid = ", ".join(section.model_fields) if section else "?"
        return f"{where}: unknown key {key!r} (valid keys: {valid})"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {msg}" if key else f"{where}: {msg}"


def validate(model: type[M], raw: Mapping[str, Any], where: str) -> M:
    """`model.model_validate(raw)`, or a ConfigError with one line from `format_error`."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(format_error(err, model, where)) from None
