# Helpers shared by all .smk files (no rules here): output paths, dataset specs, the config
# slices each stage declares as params, and its resources.

import json
import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from bismap.workflow.params import as_param, schema_node
from bismap.method.sharding import needs_statistics
from bismap.method.prototype_banks import bank_names

SCHEMA = yaml.safe_load((Path(workflow.main_snakefile).parent / "configs" / "schema.yaml").read_text())


def P(section, cfg):
    """`cfg`, a slice of `section`, as a param of rules. Keys marked x-neutral-default in the schema are left
    out of its repr while at their default, so adding such a key reruns nothing (bismap.workflow.params)."""
    return as_param(cfg, schema_node(SCHEMA, section), SCHEMA)


def C(dpath):
    """One config slice, looked up by path (e.g. "stm/features" or "data/normalize"), as a param of rules (P)."""
    return P(dpath, lookup(dpath=dpath, within=config))


# A rule's params are exactly the config sections its stage reads, each one `C("<section>")`: the schema
# is shaped like the stages' contract (one section or sub-section per stage), so no rule reshapes config
# and an edit reruns only the stages whose result depends on it. Keys that cannot change a stage's
# result are marked in the schema (x-workflow, x-used-when, x-neutral-default; bismap.workflow.params).
# Speed-only knobs live in `runtime`, which is no param: scripts pass snakemake.config["runtime"] to
# the stage. Dataset specs (source_spec, target_spec) are the one other kind of param: a `data` section
# joined with the folders the DAG makes (the synthetic benchmark, stylised images, label folders).



EXP = config["experiment"]
RESULTS = f"results/{EXP}"
LOGS = f"logs/{EXP}"
BENCH = f"benchmarks/{EXP}"
ENV = "../envs/bismap.yaml"

SYNTHETIC = C("synthetic/enabled")
ROUNDS = C("distillation/rounds")
ORACLE = C("oracle/enabled") and C("data/target/train_has_labels")
TARGET_GT = C("data/target/train_has_labels")
STYLIZE = C("stylize/method")

if STYLIZE == "folder" and not C("stylize/folder"):
    raise WorkflowError("Invalid config: `stylize.folder` must be set when `stylize.method` is folder")

# Models evaluated on target val, in table order: (file stem, table label).
MODELS = [("warmup", "source-only"), ("naive_self_training", "naive self-training"),
          ("self_training", "BiSMAP self-training")]
MODELS += [(f"distillation_r{r}", f"distillation {r}") for r in range(1, ROUNDS + 1)]
if ORACLE:
    MODELS.append(("oracle", "oracle"))

# GPU stages ask for gpu=1 when resources.use_gpu is true.
GPU_STAGES = {"warmup", "oracle", "class_entropy", "stm_features", "source_features", "target_features", "pseudo_labels",
              "naive_labels", "self_training", "naive_self_training", "teacher_labels", "distillation",
              "evaluate"}


def res(stage):
    """Resources of one stage from the `resources` section."""
    r = C(f"resources/{stage}")
    # A retried job (profile `retries`) gets attempt x the memory and time: a job killed for
    # exceeding either succeeds on a later attempt instead of failing the same way again. A training
    # stage meant to span several jobs (`submissions` > 1) keeps its runtime: each job continues.
    spans_jobs = r.get("submissions", 1) > 1
    out = {"mem_mb": lambda wildcards, attempt: r["mem_mb"] * attempt,
           "runtime": lambda wildcards, attempt: r["runtime"] * (1 if spans_jobs else attempt)}
    world = ranks(stage)
    if stage in GPU_STAGES:
        out["gpu"] = world if C("resources/use_gpu") else 0
    if "gpus" in r:
        # Every training job names its rank count (the script passes it to the stage: engine.launch).
        # Several ranks make it an "mpi" job for the SLURM plugin: no `srun -n1` around the job, and
        # the stage's own srun step starts the tasks (--ntasks, --cpus-per-task, one task per GPU).
        out["ranks"] = world
        if world > 1:
            out.update(mpi="srun", tasks=world, cpus_per_task=r["threads"])
            if C("resources/use_gpu"):
                out["tasks_per_gpu"] = 1
            if r["nodes"] > 1:
                out["nodes"] = r["nodes"]
    return out


def ranks(stage):
    """DDP ranks of a stage: gpus x nodes for training stages, 1 for the rest."""
    r = C(f"resources/{stage}")
    return r.get("gpus", 1) * r.get("nodes", 1)


def submission_retries(stage):
    """A training stage that may span `submissions` jobs (each one stopped at its time limit leaves a
    resume file) is submitted up to that many times in all; None: the profile's `retries`."""
    n = C(f"resources/{stage}/submissions")
    return None if n <= 1 else n - 1


def shards(stage):
    """Shard jobs of a label stage (resources.<stage>.shards; 1: the stage is one job)."""
    return C(f"resources/{stage}/shards")


def statistics_input(section, parts):
    """A sharded label stage's statistics file, when its `section`'s selection reads every image first."""
    return {"statistics": f"{parts}/statistics.json"} if needs_statistics(C(section)) else {}


def shard_outputs(stage, parts):
    """The gather's inputs: every shard's label folder and counts file under `parts`."""
    n = range(shards(stage))
    return {"shard_dirs": expand(f"{parts}/{{shard}}", shard=n, allow_missing=True),
            "shard_counts": expand(f"{parts}/{{shard}}.counts.json", shard=n, allow_missing=True)}


def cpu_res(stage):
    """A stage's memory and time without its GPU: the CPU-only steps of a sharded stage."""
    return {k: v for k, v in res(stage).items() if k != "gpu"}


def feature_banks():
    """The banks the GMMs are fitted on (prototypes.fit_on), in the order fit_prototypes reads them."""
    return [f"{RESULTS}/prototypes/{name}_features.h5" for name in bank_names(C("prototypes"))]


def prior_input(section):
    """The source class prior as an input only when `<section>.align_prior` is on."""
    return {"prior": f"{RESULTS}/prototypes/source_prior.json"} if C(f"{section}/align_prior") else {}


# The BiSMAP mainline (warm-up, STM and prototype chains, pseudo labels, self-training, teacher labels,
# distillation) runs before the baselines, the oracle and the evaluations whenever both are ready: those
# fill the cores the mainline leaves idle, so with few cores the final model arrives first.
MAINLINE = 10


def threads(stage):
    """The job's threads: per rank x ranks (the cores a local run reserves for it)."""
    return C(f"resources/{stage}/threads") * ranks(stage)


# ---------------------------------------------------------------------------------------------
# Dataset roots and specs

SYN_SOURCE = f"{RESULTS}/data/source"
SYN_TARGET = f"{RESULTS}/data/target"
SOURCE_ROOT = SYN_SOURCE if SYNTHETIC else C("data/source/root")
TARGET_ROOT = SYN_TARGET if SYNTHETIC else C("data/target/root")
STYLIZED = {"fda": f"{RESULTS}/stylized", "folder": C("stylize/folder"), "none": None}[STYLIZE]


def source_raw_spec():
    """Source as stored (the stylize stage's input)."""
    return {"dataset": "gta5" if SYNTHETIC else C("data/source/dataset"), "root": SOURCE_ROOT,
            "size": C("data/source/size")}


def source_spec():
    """Source as every training/feature stage reads it: stylised images when configured."""
    spec = source_raw_spec()
    if STYLIZED is not None:
        spec["images"] = STYLIZED
    return spec


def target_spec(split="train", labels=None):
    """Target spec; labels: None = ground truth, "none" = unlabelled, or a folder of label PNGs."""
    spec = {"dataset": C("data/target/dataset"), "root": TARGET_ROOT,
            "split": C(f"data/target/{split}_split"), "size": C("data/target/size")}
    if labels is not None:
        spec["labels"] = labels
    return spec


def target_gt_spec():
    """Target train with ground truth for label-quality scores, or None when it has none."""
    return target_spec("train") if TARGET_GT else None


def source_inputs():
    """Folders every stage that reads the source depends on, and the source's data manifest."""
    out = {"source_root": SOURCE_ROOT, **manifest_input("source")}
    if STYLIZED is not None:
        out["stylized"] = STYLIZED
    return out


def target_inputs(split):
    """The target root and the manifest of the split a stage reads ("train" or "val")."""
    return {"target_root": TARGET_ROOT, **manifest_input(f"target_{split}")}


# ---------------------------------------------------------------------------------------------
# Data manifests (bismap.workflow.data_manifest): a user's dataset part listed file by file, so an
# image or label replaced, added or removed reruns the stages that read it. Refreshed here, at every
# DAG build of the main process; the synthetic benchmark is a rule's output and needs none.


def data_parts():
    """Part -> the dataset specs it lists: source (with a user's stylized folder), target train, target val."""
    if SYNTHETIC:
        return {}
    source = source_spec() if STYLIZE == "folder" else source_raw_spec()
    return {"source": {"source": source}, "target_train": {"target train": target_spec("train")},
            "target_val": {"target val": target_spec("val")}}


def _refresh_manifests():
    from bismap.workflow.data_manifest import update_manifest

    present = set()
    for part, specs in data_parts().items():
        if not all(Path(spec["root"]).is_dir() for spec in specs.values()):
            continue  # the root input itself is missing: Snakemake names it
        path = f"{RESULTS}/manifests/{part}.json"
        if workflow.is_main_process:
            update_manifest(path, specs)
        if Path(path).is_file():
            present.add(part)
    return present


MANIFESTS = _refresh_manifests()


def manifest_input(part):
    """`{<part>_manifest: path}` for a user's data part, {} for the synthetic benchmark."""
    return {f"{part}_manifest": f"{RESULTS}/manifests/{part}.json"} if part in MANIFESTS else {}


def weights_input(key, value):
    """A pretrained-weights file as an input, so a missing file stops the DAG, not a job."""
    return {} if value in (None, "none", "imagenet") else {key: value}


def model_inputs():
    return weights_input("model_weights", C("model/weights"))


def stm_input(section):
    """The STM maps as an input only when the stage's `use_stm` is on."""
    return {"stm_maps": f"{RESULTS}/stm/maps.h5"} if C(f"{section}/use_stm") else {}


def init_input(section):
    """The warm-up checkpoint as an input when `<section>.init` is `warmup` (fine-tune, not fresh)."""
    return {"init_checkpoint": model_ckpt("warmup")} if C(f"{section}/init") == "warmup" else {}


def model_ckpt(name):
    return f"{RESULTS}/models/{name}.pt"


def previous_model(r):
    """Teacher of distillation round r: the self-trained model for r=1, else round r-1."""
    r = int(r)
    return model_ckpt("self_training" if r == 1 else f"distillation_r{r - 1}")


def summary_outputs():
    return [f"{RESULTS}/summary.md", f"{RESULTS}/summary.json", f"{RESULTS}/figures/miou.png",
            f"{RESULTS}/figures/samples.png", f"{RESULTS}/tables/models.html",
            f"{RESULTS}/tables/per_class_iou.html", f"{RESULTS}/tables/label_quality.html"]


def print_summary():
    summary = Path(f"{RESULTS}/summary.md")
    if summary.exists():
        print(summary.read_text(), flush=True)



def stm_extractor_inputs(wildcards):
    """The warm-up checkpoint, or the SimCLRv2 weights file when stm.features.extractor is simclr."""
    if C("stm/features/extractor") == "simclr":
        if not C("stm/features/weights"):
            raise WorkflowError("Invalid config: `stm.features.weights` must be set when `stm.features.extractor` is simclr")
        return {"weights": C("stm/features/weights")}
    return {"checkpoint": model_ckpt("warmup")}


def final_model():
    return model_ckpt(f"distillation_r{ROUNDS}" if ROUNDS > 0 else "self_training")


def label_quality_inputs():
    """Quality jsons of every label set the DAG produces, keyed by a table label."""
    out = {"naive labels": f"{RESULTS}/labels/naive.quality.json",
           "GMM pseudo labels": f"{RESULTS}/labels/pseudo.quality.json"}
    for r in range(1, ROUNDS + 1):
        out[f"teacher labels r{r}"] = f"{RESULTS}/labels/teacher_r{r}.quality.json"
    return out


def sample_label_dirs():
    out = {"naive": f"{RESULTS}/labels/naive", "pseudo": f"{RESULTS}/labels/pseudo"}
    if ROUNDS > 0:
        out[f"teacher r{ROUNDS}"] = f"{RESULTS}/labels/teacher_r{ROUNDS}"
    return out


# ---------------------------------------------------------------------------------------------
# Preflight (rules/preflight.smk)


def preflight_parts():
    """Part -> what its preflight job checks: datasets (name -> spec), weights selectors, input files.

    A part's params hold only what the params of every rule that takes it as an input already hold
    (the source part: the source spec and model; the val part: the val spec; ...). So a part reruns
    only together with the jobs that read the same data, and the edges can be plain inputs. They
    must not be ancient(): Snakemake 9 never reconsiders a job whose only link to a job that reruns
    is an ancient() input, even when the job's own params changed, so one preflight for everything
    as an ancient() input hid reruns (e.g. of evaluation after a change of the val split).
    """
    model = C("model")
    source = source_spec() if STYLIZE == "folder" else source_raw_spec()
    parts = {
        "source": {"datasets": {"source": source}, "model": model,
                   "inputs": {**source_inputs(), **model_inputs()} if STYLIZE == "folder"
                   else {"source_root": SOURCE_ROOT, **manifest_input("source"), **model_inputs()}},
        "target": {"datasets": {"target train": target_spec("train", labels=None if TARGET_GT else "none")},
                   "inputs": target_inputs("train")},
        "val": {"datasets": {"target val": target_spec("val")}, "inputs": target_inputs("val")},
    }
    student = weights_input("student_weights", C("distillation/student_weights"))
    if student:
        parts["student"] = {"model": model, "inputs": student, "student": C("distillation")}
    if C("stm/features/extractor") == "simclr" and C("stm/features/weights"):
        parts["stm"] = {"stm": C("stm/features"),
                        "inputs": {"stm_weights": C("stm/features/weights")}}
    return parts


PREFLIGHT_PARTS = preflight_parts()


def preflight(*parts):
    """Preflight reports of `parts` as inputs (only the parts this config has)."""
    return {f"preflight_{p}": f"{RESULTS}/preflight/{p}.json" for p in parts if p in PREFLIGHT_PARTS}
