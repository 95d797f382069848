"""Every rule's params are config sections as they are (one `C("<section>")` each) or dataset specs.

The workflow is parsed in-process with Snakemake's API and every param of every rule is compared
with the config: a param that merges, renames or picks keys (a rule reshaping config in Python)
equals no section and fails here, naming the rule and the param.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

from bismap.workflow.params import as_param, schema_node
from conftest import REPO
from test_workflow import make_copy

SCHEMA = yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())
SPEC_KEYS = {"dataset", "root", "split", "size", "labels", "images"}
# The report's table rows and sample folders: names of the DAG's models and label sets, not config.
DAG_FACTS = {("report", "models"), ("report", "quality_labels"), ("report", "label_dir_names")}


@contextlib.contextmanager
def parsed(workdir: Path, configfile: str) -> Iterator[Any]:
    """The Snakemake workflow in `workdir` parsed with `configfile` (as `--configfile` would)."""
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                          config_settings=ConfigSettings(configfiles=[workdir / configfile]),
                          snakefile=workdir / "Snakefile", workdir=workdir)
        yield wf._workflow


def sections(config: dict, path: str = "") -> Iterator[str]:
    """Every config path, sections and single keys (e.g. "stm", "stm/features", "stm/features/k")."""
    for key, value in config.items():
        sub = f"{path}/{key}" if path else key
        yield sub
        if isinstance(value, dict):
            yield from sections(value, sub)


def lookup(config: dict, dpath: str) -> Any:
    value = config
    for part in dpath.split("/"):
        value = value[part]
    return value


def is_spec(value: Any, config: dict) -> bool:
    """A dataset spec: the dataset layout and size of a `data` side, its split, and paths."""
    if not isinstance(value, dict) or not {"dataset", "root"} <= set(value) <= SPEC_KEYS:
        return False
    sides = [config["data"]["source"], config["data"]["target"]]
    if not any(value.get("size") == side["size"] for side in sides):
        return False
    if "split" in value and value["split"] not in (config["data"]["target"]["train_split"],
                                                  config["data"]["target"]["val_split"]):
        return False
    return value["dataset"] in ("gta5", "synthia", "cityscapes")


def problems(workflow, config: dict) -> list[str]:
    params = {repr(as_param(copy.deepcopy(lookup(config, p)), schema_node(SCHEMA, p), SCHEMA)): p
              for p in sections(config)}
    out = []
    for rule in workflow.rules:
        if not rule.params:
            continue
        for name in rule.params.keys():
            value = rule.params[name]
            for r in ("1", "2"):
                for part in ("source", "target", "val", "student", "stm"):
                    try:
                        got = value(SimpleNamespace(r=r, part=part)) if callable(value) else value
                    except KeyError:
                        continue  # a preflight part this config does not have
                    if (rule.name, name) in DAG_FACTS and all(isinstance(v, str) for v in got):
                        continue
                    if repr(got) in params or is_spec(got, config) or got in ({}, None):
                        continue
                    if isinstance(got, dict) and got and all(is_spec(v, config) for v in got.values()):
                        continue  # the preflight's datasets: name -> spec
                    out.append(f"rule {rule.name}: param {name} = {got!r:.200} is no config section")
    return sorted(set(out))


@pytest.mark.parametrize("configfile", ["config.yaml", "configs/gta5.yaml", "configs/synthia.yaml"])
def test_every_rule_param_is_one_config_section(tmp_path, configfile) -> None:
    with parsed(make_copy(tmp_path / "wf"), configfile) as workflow:
        assert len(workflow.rules) > 15, "the rules were not parsed"
        assert problems(workflow, workflow.config) == []


def test_optional_rules_params_are_config_sections_too(tmp_path) -> None:
    """Rules that exist only under a switch (here target_features, with prototypes.fit_on: both)."""
    wf_dir = make_copy(tmp_path / "wf")
    cfg = yaml.safe_load((wf_dir / "config.yaml").read_text())
    cfg["prototypes"]["fit_on"] = "both"
    (wf_dir / "fit_both.yaml").write_text(yaml.safe_dump(cfg))
    with parsed(wf_dir, "fit_both.yaml") as workflow:
        assert "target_features" in {r.name for r in workflow.rules}
        assert problems(workflow, workflow.config) == []


def test_a_reshaped_param_is_caught(tmp_path) -> None:
    """The check itself: a rule that merges two sections into one param fails it."""
    wf_dir = make_copy(tmp_path / "wf")
    smk = wf_dir / "rules" / "warmup.smk"
    text = smk.read_text()
    assert 'train=C("train"),' in text
    smk.write_text(text.replace('train=C("train"),', 'train={**C("train"), **{"lr": 0.5}},'))
    with parsed(wf_dir, "config.yaml") as workflow:
        assert problems(workflow, workflow.config) == [
            "rule warmup: param train = " + repr({**workflow.config["train"], "lr": 0.5})[:200]
            + " is no config section"]
