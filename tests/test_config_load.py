"""bismap.workflow.config_load: the config as rules read it, and one-line errors naming the key."""
from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import validate

from bismap.workflow.config_load import ConfigError, coerce_numbers, load
from conftest import REPO

ROOT = yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def loaded(**sections) -> dict:
    cfg = copy.deepcopy(DEFAULT)
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return load(cfg, validate)


def test_strings_from_the_command_line_become_numbers_booleans_and_nulls() -> None:
    cfg = {"train": {"lr": "1e-3", "iterations": "40"}, "teacher_labels": {"flip": "false"},
           "source_prior": {"images": "null"}, "stylize": {"folder": "0.5"}}
    coerce_numbers(cfg, ROOT, ROOT)
    assert cfg["train"] == {"lr": 0.001, "iterations": 40}
    assert cfg["teacher_labels"]["flip"] is False and cfg["source_prior"]["images"] is None
    assert cfg["stylize"]["folder"] == "0.5"  # a string key keeps its string


def test_defaults_are_filled_and_auto_values_resolved() -> None:
    cfg = load({}, validate)
    assert cfg["stm"]["prototypes"]["k"] == 10 and cfg["data"]["normalize"]["std"] == [0.229, 0.224, 0.225]
    assert cfg["evaluation"]["protocol"] == "cityscapes19"
    assert cfg["pseudo_labels"]["threshold"] == 0.9      # null under selection balanced: the softmax scale
    assert loaded(pseudo_labels={"selection": "loglik"})["pseudo_labels"]["threshold"] == 100.0
    assert loaded(pseudo_labels={"selection": "loglik", "threshold": 50})["pseudo_labels"]["threshold"] == 50.0
    synthia = loaded(synthetic={"enabled": False}, data={"source": {"dataset": "synthia", "root": "data/gta5",
                                                                   "size": None}})
    assert synthia["evaluation"]["protocol"] == "synthia"


@pytest.mark.parametrize("sections, message", [
    ({"stm": {"k": 4}}, "Invalid config: unknown key stm.k (not in configs/schema.yaml) (stm.k is now "
                        "stm.prototypes.k: docs/troubleshooting.md#upgrades)"),
    ({"data": {"mean": [0, 0, 0]}}, "unknown key data.mean (not in configs/schema.yaml) (data.mean is now "
                                    "data.normalize.mean"),
    ({"prior_alignment": {"source_images": 3}}, "prior_alignment.source_images is now source_prior.images"),
    ({"train": {"iteratons": 5}}, "Invalid config: unknown key train.iteratons (not in configs/schema.yaml)"),
    ({"train": {"lr": "fast"}}, "Invalid config: train.lr: 'fast' is not of type 'number' (write a plain number"),
    ({"data": {"target": {"root": "/data/cs"}}}, "Invalid config: data.target.root is set (/data/cs) but "
                                                 "synthetic.enabled is true"),
])
def test_a_bad_config_is_one_line_naming_the_key(sections, message) -> None:
    with pytest.raises(ConfigError) as err:
        loaded(**sections)
    assert message in str(err.value) and "\n" not in str(err.value)
