"""docs/configuration.md is generated from configs/schema.yaml and must not drift from it."""
from __future__ import annotations

from bismap.workflow import config_docs


def test_configuration_md_matches_the_schema():
    committed = config_docs.OUT.read_text() if config_docs.OUT.is_file() else ""
    assert committed == config_docs.generate(), (
        "docs/configuration.md is out of date with configs/schema.yaml; regenerate it with "
        f"`{config_docs.COMMAND}` and commit the result")


def test_every_schema_key_has_a_row():
    import yaml

    schema = yaml.safe_load(config_docs.SCHEMA.read_text())
    text = config_docs.generate()
    for section, node in schema["properties"].items():
        for key in (node.get("properties") or {}):
            assert f"| `{section}.{key}` |" in text, f"{section}.{key}"


def test_ref_defaults_come_from_the_referring_key():
    text = config_docs.generate()
    assert "| `train_overrides.self_training.iterations` | integer or null | `300` |" in text
    assert "| `train_overrides.warmup.iterations` | integer or null | `null` |" in text
