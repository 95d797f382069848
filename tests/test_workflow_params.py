"""bismap.workflow.params: config slices whose repr (what Snakemake compares) hides neutral new keys."""
from __future__ import annotations

import copy
import pickle

import yaml

from bismap.workflow.params import ParamSlice, as_param, schema_node
from conftest import REPO, schema_defaults

ROOT = {
    "$defs": {"inner": {"type": "object", "default": {}, "properties": {
        "a": {"type": "integer", "default": 1},
        "fresh": {"type": "boolean", "default": False, "x-neutral-default": True}}}},
    "properties": {"section": {"type": "object", "properties": {
        "x": {"type": "number", "default": 0.5},
        "new": {"type": "integer", "default": 3, "x-neutral-default": True},
        "nested": {"$ref": "#/$defs/inner", "x-neutral-default": True}}}},
}


def test_neutral_keys_at_their_default_are_left_out_of_the_repr():
    value = {"x": 0.5, "new": 3, "nested": {"a": 1, "fresh": False}}
    param = as_param(value, schema_node(ROOT, "section"), ROOT)
    assert param == value                                  # the stage sees every key
    assert repr(param) == repr({"x": 0.5})                 # Snakemake sees the slice before the keys existed
    moved = as_param({**value, "new": 4, "nested": {"a": 1, "fresh": True}}, schema_node(ROOT, "section"), ROOT)
    assert repr(moved) == repr({"x": 0.5, "new": 4, "nested": {"a": 1, "fresh": True}})
    inner = as_param({**value, "nested": {"a": 2, "fresh": False}}, schema_node(ROOT, "section"), ROOT)
    assert repr(inner) == repr({"x": 0.5, "nested": {"a": 2}})


def test_a_slice_pickles_to_a_plain_dict():
    param = as_param({"x": 0.5, "new": 3, "nested": {"a": 1, "fresh": False}}, schema_node(ROOT, "section"), ROOT)
    back = pickle.loads(pickle.dumps(param))
    assert type(back) is dict and type(back["nested"]) is dict and back == param
    assert copy.deepcopy(param) == param


def test_the_real_schema_slices_keep_their_repr():
    """No key of today's schema is neutral unless marked: every existing slice's repr is a plain dict's,
    so results made before this wrapper existed keep their params."""
    root = yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())
    for section in ("train", "pseudo_labels", "teacher_labels", "evaluation", "model", "stm", "synthetic"):
        value = schema_defaults(section)
        param = as_param(value, schema_node(root, section), root)
        assert isinstance(param, ParamSlice)
        hidden = [k for k, node in root["properties"][section]["properties"].items() if node.get("x-neutral-default")]
        assert repr(param) == repr({k: v for k, v in value.items() if k not in hidden})
