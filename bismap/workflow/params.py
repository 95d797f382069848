"""Config slices as rule params, so that a new key whose default changes nothing reruns nothing.

Snakemake decides that a job's params changed by comparing the repr() of each param with the one
recorded when the job ran (snakemake.persistence: `_params`). A release that adds a key to a config
section would change that repr for every rule whose params hold the section, and rerun finished
stages although the key's default keeps the old behaviour. Such keys say so in configs/schema.yaml
with `x-neutral-default: true`; `as_param` wraps a slice in a dict whose repr leaves them out while
they hold their default. The stage still receives every key: the wrapper pickles to a plain dict
(what Snakemake hands the script), and equality and iteration are a dict's.

Set `x-neutral-default` only on a key whose default reproduces exactly what the code did before the
key existed; a key that changes results by default must not have it (docs/troubleshooting.md).

Two more marks keep a section whole as a rule's param (one `C("section")` per param, no reshaping
in the rules) while editing a key that cannot change the stage's result reruns nothing:
`x-workflow: true` on a switch that decides which jobs run, not what a stage computes (e.g.
`distillation.rounds`; left out of the param, so no stage receives it), and
`x-used-when: {<sibling>: [values]}` on a key the stage reads only while a sibling key holds one of
those values (e.g. `teacher_labels.percentile` under `selection: balanced`).
"""
from __future__ import annotations

from typing import Any

NEUTRAL = "x-neutral-default"
WORKFLOW = "x-workflow"
USED_WHEN = "x-used-when"


class ParamSlice(dict):
    """A dict whose repr() omits the keys in `hidden` (set by `as_param`)."""

    hidden: frozenset = frozenset()

    def __repr__(self) -> str:
        if not self.hidden:
            return dict.__repr__(self)
        return repr({k: v for k, v in self.items() if k not in self.hidden})

    def __reduce__(self):
        return dict, (dict(self),)


def _resolve(node: Any, root: dict) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        target: Any = root
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_node(root: dict, dpath: str) -> dict | None:
    """The schema node of a config path such as "pseudo_labels" or "data/target" (None if unknown)."""
    node: Any = root
    for part in [p for p in dpath.split("/") if p]:
        node = _resolve(node, root)
        props = node.get("properties") if isinstance(node, dict) else None
        if not props or part not in props:
            return None
        node = props[part]
    return _resolve(node, root)


def filled_default(node: dict, root: dict) -> Any:
    """A key's default as validation fills it in: an object's own default with its properties' defaults."""
    node = _resolve(node, root)
    value = node.get("default")
    props = node.get("properties")
    if not props or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in props.items():
        sub = _resolve(sub, root)
        if key in out:
            continue
        if "default" in sub:
            out[key] = filled_default(sub, root)
    return out


def as_param(value: Any, node: dict | None, root: dict) -> Any:
    """`value` without its workflow switches, every nested dict wrapped so that its repr hides the keys
    that cannot change the stage's result (neutral keys at their default, unused keys)."""
    if not isinstance(value, dict) or not isinstance(node, dict):
        return value
    props = node.get("properties", {})
    out = ParamSlice()
    hidden = set()
    for key, sub in value.items():
        sub_node = _resolve(props.get(key), root) if key in props else None
        if isinstance(sub_node, dict) and sub_node.get(WORKFLOW):
            continue  # read by the workflow alone: no stage receives it
        out[key] = as_param(sub, sub_node, root)
        if isinstance(sub_node, dict) and _hidden(sub_node, sub, value, root):
            hidden.add(key)
    out.hidden = frozenset(hidden)
    return out


def _hidden(node: dict, value: Any, section: dict, root: dict) -> bool:
    """Whether a key's value cannot change its stage's result (the marks in the module docstring)."""
    used_when = node.get(USED_WHEN)
    if used_when and any(section.get(key) not in allowed for key, allowed in used_when.items()):
        return True
    return bool(node.get(NEUTRAL)) and value == filled_default(node, root)
