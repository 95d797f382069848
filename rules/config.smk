# Config validation: runs before any other rule file reads the config, so an unknown key or a
# wrong type stops the workflow before the DAG is built, with a message naming the key
# (bismap.workflow.config_load: coercion of strings from --config, schema defaults, checks, `auto`).

from pathlib import Path

from snakemake.exceptions import WorkflowError

_ROOT = str(Path(workflow.main_snakefile).parent)
if _ROOT not in sys.path:  # the package beside the Snakefile, also when snakemake runs from another env
    sys.path.insert(0, _ROOT)

from bismap.workflow.config_load import ConfigError, load as load_config

try:
    load_config(config, validate, schema=Path(_ROOT) / "configs" / "schema.yaml")
except ConfigError as e:
    raise WorkflowError(str(e)) from None
