# Config validation: runs before any other rule file reads the config, so an unknown key or a
# wrong type stops the workflow before the DAG is built, with a message naming the key.

from pathlib import Path

import jsonschema
from snakemake.exceptions import WorkflowError


def _types(node):
    t = node.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def _resolve(node, root):
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _as_number(text, integer):
    """'0.5', '1e-3', '+1E3', '40' -> a number (int for integer keys); None when it is not one."""
    try:
        value = float(text.strip().replace("_", ""))
    except ValueError:
        return None
    if integer:
        return int(value) if value.is_integer() else None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def coerce_numbers(cfg, node, root):
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


def validate_config(cfg, schema):
    """validate() with defaults filled in, re-raised as one line naming the offending key."""
    import yaml

    schema_path = Path(workflow.main_snakefile).parent / "rules" / schema
    root = yaml.safe_load(schema_path.read_text())
    coerce_numbers(cfg, root, root)
    try:
        validate(cfg, schema)
    except WorkflowError as e:
        err = e.__cause__ or e.__context__
        if not isinstance(err, jsonschema.ValidationError):
            raise
        where = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            keys = ", ".join(f"{where}.{k}" if where else k for k in extra)
            raise WorkflowError(f"Invalid config: unknown key {keys} (not in configs/schema.yaml)") from None
        hint = ""
        if err.validator == "type" and isinstance(err.instance, str) and set(_types(err.schema)) & {"number", "integer"}:
            hint = (" (write a plain number without quotes, e.g. 0.001, 1.0e-3 or 40; in YAML files `1e-3` "
                    "without a dot is read as text by YAML 1.1 and is converted only when it is a valid number)")
        raise WorkflowError(f"Invalid config: {where or 'top level'}: {err.message}{hint}") from None


def check_data_source(cfg, schema):
    """With the synthetic benchmark on, dataset roots other than the schema's placeholders would be
    silently ignored: refuse and name `synthetic.enabled`."""
    import yaml

    root = yaml.safe_load((Path(workflow.main_snakefile).parent / "rules" / schema).read_text())
    if not cfg.get("synthetic", {}).get("enabled", True):
        return
    data_props = root["properties"]["data"]["properties"]
    for side in ("source", "target"):
        given = cfg.get("data", {}).get(side, {}).get("root")
        default = data_props[side]["properties"]["root"]["default"]
        if given is not None and given != default:
            raise WorkflowError(f"Invalid config: data.{side}.root is set ({given}) but synthetic.enabled is true, "
                                f"so the built-in synthetic benchmark would be used instead; set "
                                f"synthetic.enabled: false (e.g. --config 'synthetic={{\"enabled\": false}}') "
                                f"to train on your data, or remove data.{side}.root")



def check_scaling(cfg):
    """Values that mean nothing at this data size or schedule length (bismap.workflow.config_checks)."""
    root = str(Path(workflow.main_snakefile).parent)
    if root not in sys.path:  # the package beside the Snakefile, also when snakemake runs from another env
        sys.path.insert(0, root)
    from bismap.workflow.config_checks import scale_problems

    problems = scale_problems(cfg)
    if problems:
        raise WorkflowError("Invalid config: " + "; ".join(problems))


def resolve_auto(cfg):
    """`auto` values replaced by what they stand for (bismap.workflow.config_resolve)."""
    from bismap.workflow.config_resolve import resolve_auto as resolve

    resolve(cfg)


validate_config(config, "../configs/schema.yaml")
check_data_source(config, "../configs/schema.yaml")
check_scaling(config)
resolve_auto(config)
