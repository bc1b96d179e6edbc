"""The base of the typed config sections in `capatlas.settings` (generated from the schema)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from capatlas.errors import CapatlasError


class Section:
    """A frozen dataclass view of one config section; `of` builds it from a mapping."""

    @classmethod
    def of(cls, mapping: Mapping[str, Any] | None, *, where: str | None = None):
        """This section from a (validated or partial) mapping: missing keys take the schema's defaults."""
        where = where or cls.__name__
        mapping = {} if mapping is None else mapping
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise CapatlasError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(fields)})")
        hints = typing.get_type_hints(cls)
        values = {name: _build(hints[name], value, f"{where}.{name}") for name, value in mapping.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # a required key is missing
            raise CapatlasError(f"{where}: {exc}") from None


def _build(hint, value, where: str):
    """`value` as the annotation `hint` wants it: sections (and lists of them) become dataclasses."""
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint.of(value, where=where) if isinstance(value, Mapping) else value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
    for option in options:
        if isinstance(option, type) and issubclass(option, Section) and isinstance(value, Mapping):
            return option.of(value, where=where)
        if typing.get_origin(option) is list and isinstance(value, list):
            return _build(option, value, where)
    if typing.get_origin(hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        return [_build(item, entry, f"{where}[{k}]") for k, entry in enumerate(value)]
    return value
