"""The workflow's config as rules read it: numbers coerced, validated against configs/schema.yaml with
its defaults filled in, refused when contradictory, `auto` values resolved (rules/config.smk calls
`load` once, before any other rule file reads the config).

Every problem is one line naming the key, raised as a ConfigError (the workflow turns it into a
WorkflowError), so an unknown key or a wrong type stops the run before the DAG is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "configs" / "schema.yaml"

# Keys that moved to the section of the stage that reads them: an old config gets the new place named.
MOVED = {
    **{f"stm.{k}": f"stm.features.{k}" for k in ("extractor", "weights", "weights_key", "depth", "width_multiplier",
                                               "sk_ratio", "image_size", "mean", "std", "pool", "grid",
                                               "batch_size")},
    **{f"stm.{k}": f"stm.prototypes.{k}" for k in ("k", "kmeans_seed", "kmeans_n_init", "kmeans_max_iter",
                                                 "kmeans_tol", "max_samples")},
    **{f"stm.{k}": f"stm.maps.{k}" for k in ("momentum", "entropy_bonus")},
    "data.mean": "data.normalize.mean",
    "data.std": "data.normalize.std",
    "prior_alignment.source_images": "source_prior.images",
}


class ConfigError(ValueError):
    """An invalid workflow config, in one line."""


def _types(node: dict) -> set[str]:
    t = node.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def _resolve(node: Any, root: dict) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _as_number(text: str, integer: bool) -> int | float | None:
    """'0.5', '1e-3', '+1E3', '40' -> a number (int for integer keys); None when it is not one."""
    try:
        value = float(text.strip().replace("_", ""))
    except ValueError:
        return None
    if integer:
        return int(value) if value.is_integer() else None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def coerce_numbers(cfg: Any, node: Any, root: dict) -> Any:
    """Numbers, booleans and nulls that arrive as strings where the schema wants one: Snakemake hands
    nested `--config` values over as strings ('0.5', 'true', 'null'), and YAML 1.1 reads `1e-3` (no dot)
    as a string. Converted in place; anything else is left for the validator to report."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return cfg
    if isinstance(cfg, dict):
        props = node.get("properties", {})
        for key, value in list(cfg.items()):
            if key in props:
                cfg[key] = coerce_numbers(value, props[key], root)
        return cfg
    if isinstance(cfg, list) and isinstance(node.get("items"), dict):
        return [coerce_numbers(v, node["items"], root) for v in cfg]
    types = _types(node)
    if not isinstance(cfg, str) or "string" in types:
        return cfg
    word = cfg.strip().lower()
    if "boolean" in types and word in ("true", "false"):
        return word == "true"
    if "null" in types and word in ("null", "none", "~"):
        return None
    if types & {"number", "integer"}:
        value = _as_number(cfg, "number" not in types)
        return cfg if value is None else value
    return cfg


def explain(err: jsonschema.ValidationError) -> str:
    """One line naming the offending key (and, for a key that moved, where it lives now)."""
    where = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        names = [f"{where}.{k}" if where else k for k in extra]
        moved = [f"{n} is now {MOVED[n]}" for n in names if n in MOVED]
        hint = f" ({'; '.join(moved)}: docs/troubleshooting.md#upgrades)" if moved else ""
        return f"Invalid config: unknown key {', '.join(names)} (not in configs/schema.yaml){hint}"
    hint = ""
    if err.validator == "type" and isinstance(err.instance, str) and _types(err.schema) & {"number", "integer"}:
        hint = (" (write a plain number without quotes, e.g. 0.001, 1.0e-3 or 40; in YAML files `1e-3` "
                "without a dot is read as text by YAML 1.1 and is converted only when it is a valid number)")
    return f"Invalid config: {where or 'top level'}: {err.message}{hint}"


def check_data_source(cfg: dict, root: dict) -> None:
    """With the synthetic benchmark on, dataset roots other than the schema's placeholders would be
    silently ignored: refuse and name `synthetic.enabled`."""
    if not cfg.get("synthetic", {}).get("enabled", True):
        return
    data_props = root["properties"]["data"]["properties"]
    for side in ("source", "target"):
        given = cfg.get("data", {}).get(side, {}).get("root")
        default = data_props[side]["properties"]["root"]["default"]
        if given is not None and given != default:
            raise ConfigError(f"Invalid config: data.{side}.root is set ({given}) but synthetic.enabled is true, "
                              f"so the built-in synthetic benchmark would be used instead; set "
                              f"synthetic.enabled: false (e.g. --config 'synthetic={{\"enabled\": false}}') "
                              f"to train on your data, or remove data.{side}.root")


def load(cfg: dict, validate: Callable[[dict, str], None], schema: str | Path = SCHEMA) -> dict:
    """`cfg` coerced, validated (with defaults: `validate` is snakemake.utils.validate), checked and
    resolved, in place; a ConfigError on the first problem."""
    from bismap.workflow.config_checks import scale_problems
    from bismap.workflow.config_resolve import resolve_auto

    root = yaml.safe_load(Path(schema).read_text())
    coerce_numbers(cfg, root, root)
    try:
        validate(cfg, str(schema))
    except Exception as e:  # Snakemake wraps the jsonschema error in a WorkflowError
        err = e if isinstance(e, jsonschema.ValidationError) else (e.__cause__ or e.__context__)
        if not isinstance(err, jsonschema.ValidationError):
            raise
        raise ConfigError(explain(err)) from None
    check_data_source(cfg, root)
    problems = scale_problems(cfg)
    if problems:
        raise ConfigError("Invalid config: " + "; ".join(problems))
    resolve_auto(cfg)
    return cfg
