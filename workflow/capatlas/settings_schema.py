"""Writes capatlas/settings.py, the typed config sections, from workflow/schemas/config.schema.yaml.

The schema is the one place a key, its type and its default are stated;
`capatlas.settings` is generated from it so that stages read typed fields
instead of restating defaults with `.get(key, default)`.
tests/test_config.py fails when the checked-in module and the schema
disagree; after editing the schema, regenerate with

    python -m capatlas.settings_schema
"""

from __future__ import annotations

import keyword
import sys
from pathlib import Path

from capatlas.config import load_schema

OUT = Path(__file__).resolve().parent / "settings.py"
ROOT_CLASS = "Settings"
HEADER = '''"""Typed config sections, generated from workflow/schemas/config.schema.yaml: do not edit.

Regenerate with `python -m capatlas.settings_schema` after changing the
schema (tests/test_config.py fails until then). Each section is a frozen
dataclass whose fields and defaults are the schema's; build one from a
config (validated or partial) with `Section.of(mapping)`, e.g.
`Attribution.of(config["attribution"])` or `Benchmark.of(entry)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from capatlas.sections import Section
'''
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


def class_name(*parts: str) -> str:
    return "".join(word.capitalize() for part in parts for word in part.split("_"))


class Generator:
    def __init__(self, schema: dict):
        self.schema = schema
        self.classes: dict[str, str] = {}  # name -> source, in dependency order

    def resolve(self, node: dict) -> tuple[dict, str | None]:
        """(the node with its $ref followed, the definition's name or None)."""
        ref = node.get("$ref")
        if not ref:
            return node, None
        name = ref.rsplit("/", 1)[-1]
        return {**self.schema["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}, name

    def annotation(self, node: dict, owner: str, key: str) -> str:
        node, definition = self.resolve(node)
        if "properties" in node:
            # Top-level sections go by their key (Attribution), nested ones by their path (UnlearningForget).
            prefix = "" if owner == ROOT_CLASS else owner
            return self.emit(class_name(definition) if definition else prefix + class_name(key), node)
        types = node.get("type", "object")
        types = [types] if isinstance(types, str) else list(types)
        parts = []
        for kind in types:
            if kind == "null":
                continue
            if kind == "array":
                items = node.get("items")
                parts.append(f"list[{self.annotation(items, owner, key + '_item')}]" if items else "list")
            elif kind == "object":
                parts.append("dict")
            else:
                parts.append(SCALARS[kind])
        if "null" in types:
            parts.append("None")
        return " | ".join(parts)

    def default(self, node: dict, annotation: str) -> str:
        node, _ = self.resolve(node)
        if "properties" in node:
            return f"dataclasses.field(default_factory=lambda: {annotation}.of({node.get('default', {})!r}))"
        if "default" not in node:
            return ""
        value = node["default"]
        if isinstance(value, (list, dict)):
            return f"dataclasses.field(default_factory=lambda: {value!r})"
        return repr(value)

    def emit(self, name: str, node: dict) -> str:
        if name in self.classes:
            return name
        self.classes[name] = ""  # reserve: nested classes are emitted first
        required, optional = [], []
        for key, sub in node["properties"].items():
            if keyword.iskeyword(key) or not key.isidentifier():
                raise ValueError(f"schema key {key!r} of {name} is not a Python identifier")
            annotation = self.annotation(sub, name, key)
            default = self.default(sub, annotation)
            description = self.resolve(sub)[0].get("description")
            comment = f"  # {' '.join(str(description).split())}" if description else ""
            line = f"    {key}: {annotation}" + (f" = {default}" if default else "")
            if len(line + comment) > 120:
                comment = ""
            (optional if default else required).append(line + comment)
        doc = " ".join(str(node.get("description") or f"The {name} keys.").split())
        body = "\n".join(required + optional) or "    pass"
        source = f'@dataclass(frozen=True)\nclass {name}(Section):\n    """{doc}"""\n\n{body}\n'
        # Re-insert after its nested classes so that default factories refer to defined names.
        del self.classes[name]
        self.classes[name] = source
        return name

    def module(self) -> str:
        self.emit(ROOT_CLASS, {**self.schema, "description": "A whole capatlas config."})
        return HEADER + "".join(f"\n\n{source}" for source in self.classes.values())


def generate() -> str:
    return Generator(load_schema()).module()


def main() -> int:
    OUT.write_text(generate())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
