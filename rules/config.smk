# Config validation: runs before any other rule file reads the config, so an unknown key or a
# wrong type stops the workflow before the DAG is built, with a message naming the key.

import jsonschema
from snakemake.exceptions import WorkflowError


def validate_config(cfg, schema):
    """validate() with defaults filled in, re-raised as one line naming the offending key."""
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
        raise WorkflowError(f"Invalid config: {where or 'top level'}: {err.message}") from None



validate_config(config, "../configs/schema.yaml")
