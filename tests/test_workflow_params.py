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


def test_workflow_switches_are_left_out_and_unused_keys_hidden():
    root = {"properties": {"section": {"type": "object", "properties": {
        "rounds": {"type": "integer", "default": 2, "x-workflow": True},
        "mode": {"type": "string", "default": "a"},
        "only_b": {"type": "number", "default": 0.5, "x-used-when": {"mode": ["b"]}}}}}}
    node = schema_node(root, "section")
    param = as_param({"rounds": 2, "mode": "a", "only_b": 0.7}, node, root)
    assert param == {"mode": "a", "only_b": 0.7}          # no stage receives the workflow switch
    assert repr(param) == repr({"mode": "a"})              # editing only_b under mode a reruns nothing
    assert repr(as_param({"rounds": 5, "mode": "b", "only_b": 0.7}, node, root)) == repr({"mode": "b", "only_b": 0.7})


def test_the_real_schema_slices_hide_only_marked_keys():
    """A key of the schema is hidden from Snakemake only when marked: every other key of a slice
    is in its repr, so an edit of it reruns the stage."""
    root = yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())
    for section in ("train", "pseudo_labels", "teacher_labels", "evaluation", "model", "stm/features",
                    "stm/prototypes", "synthetic", "distillation", "prior_alignment"):
        value = schema_defaults(section)
        node = schema_node(root, section)
        param = as_param(value, node, root)
        assert isinstance(param, ParamSlice)
        props = node["properties"]
        workflow = {k for k, n in props.items() if n.get("x-workflow")}
        neutral = {k for k, n in props.items() if n.get("x-neutral-default")}
        unused = {k for k, n in props.items()
                  if any(value[key] not in allowed for key, allowed in n.get("x-used-when", {}).items())}
        assert set(param) == set(value) - workflow
        assert repr(param) == repr({k: v for k, v in value.items() if k not in workflow | neutral | unused})
    assert "rounds" not in as_param(schema_defaults("distillation"), schema_node(root, "distillation"), root)
