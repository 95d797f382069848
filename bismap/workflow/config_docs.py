"""docs/configuration.md, generated from configs/schema.yaml (the schema is the one source).

    python -m bismap.workflow.config_docs            # rewrite docs/configuration.md
    python -m bismap.workflow.config_docs --check    # exit 1 when the committed file is out of date

One markdown table per top-level section: key (dotted), type, default, description. Keys whose
value is a `$ref` to a shared definition are expanded with that definition's keys; the default
shown is the section's own default where it sets one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "configs" / "schema.yaml"
OUT = REPO / "docs" / "configuration.md"
COMMAND = "python -m bismap.workflow.config_docs"


def _resolve(node: dict, schema: dict) -> dict:
    ref = node.get("$ref")
    if not ref:
        return node
    target = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    merged = dict(target)
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _type(node: dict) -> str:
    t = node.get("type", "")
    text = " or ".join(t) if isinstance(t, list) else str(t)
    if "enum" in node:
        text += ": " + ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in node["enum"])
    if node.get("type") == "array" and isinstance(node.get("items"), dict) and "type" in node["items"]:
        text += f" of {node['items']['type']}"
    return text


def _default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: Any) -> str:
    """A description for markdown: one line, `|` escaped, `<...>` not taken for an HTML tag."""
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;")


def rows(name: str, node: dict, schema: dict, default: Any = None, has_default: bool = False
         ) -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of `node` and, for objects, of every key below it."""
    node = _resolve(node, schema)
    if not has_default and "default" in node:
        default, has_default = node["default"], True
    props = node.get("properties") or {}
    if props:
        if node.get("description"):
            yield name, "object", "", node["description"]
        for key, child in props.items():
            given = isinstance(default, dict) and key in default
            yield from rows(f"{name}.{key}", child, schema, default[key] if given else None, given)
        return
    yield name, _type(node), _default(default) if has_default else "", node.get("description", "")


def render(schema: dict) -> str:
    lines = ["# Configuration reference", "",
             f"<!-- Generated from configs/schema.yaml by `{COMMAND}`; do not edit by hand. -->", "",
             _prose(schema.get("description", "")), "",
             "Every key, its type, its default (the embedded default, identical to config.yaml) and what it "
             "does. Set keys in your own config file and pass it with `--configfile`; it is merged over "
             "config.yaml.", ""]
    for section, node in schema.get("properties", {}).items():
        node = _resolve(node, schema)
        lines += [f"## `{section}`", ""]
        if node.get("description") and node.get("properties"):
            lines += [_prose(node["description"]), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, typ, default, desc in rows(section, node, schema):
            if key == section and typ == "object":
                continue
            lines.append(f"| `{key}` | {_cell(typ)} | "
                         f"{_cell(default) and '`' + _cell(default) + '`'} | {_prose(desc)} |")
        lines.append("")
    return "\n".join(lines)


def generate(schema_path: Path = SCHEMA) -> str:
    import yaml

    return render(yaml.safe_load(schema_path.read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write docs/configuration.md from configs/schema.yaml.")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    p.add_argument("--out", type=Path, default=OUT, help="output file (default: docs/configuration.md)")
    args = p.parse_args(argv)
    text = generate()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date with configs/schema.yaml; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
