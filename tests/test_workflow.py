"""The Snakemake workflow itself, run for real with the tiny config on the CPU.

Fast tests build the DAG only (`-n`), lint, and check config validation; tests marked slow (over
~5 s: several Snakemake starts, or the real run) are left out of `pytest -m "not slow and not slurm"`.
The real-run test runs the whole DAG once and then checks what a config edit reruns. Snakemake runs in a copy of the
workflow files (Snakefile, rules/, scripts/, configs/, ...) so the checkout stays clean and two
test runs never share a .snakemake lock.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "configs", "config.yaml", "envs", "report")

ALL_RULES = {
    "synthetic_data": 1, "stylize": 1, "preflight": 3, "warmup": 1, "oracle": 1, "class_entropy": 1, "stm_features": 1,
    "stm_prototypes": 1, "stm_maps": 1, "source_features": 1, "fit_prototypes": 1, "source_prior": 1,
    "pseudo_labels": 1, "naive_labels": 1, "naive_self_training": 1, "self_training": 1, "teacher_labels": 2,
    "distillation": 2, "evaluate": 6, "report": 1, "all": 1,
}


def make_copy(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    # scripts/_bootstrap.py puts the copy's root first on sys.path: make it this checkout's package.
    (dest / "bismap").symlink_to(REPO / "bismap", target_is_directory=True)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry-)run as {rule: count}; {} when there is nothing to do."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts: dict[str, int] = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run(workdir: Path, *configfiles: str, extra: tuple[str, ...] = ()) -> dict[str, int]:
    proc = snakemake(workdir, "-n", "--cores", "2", *extra, "--configfile", *configfiles)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return job_counts(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def wf(module_dir) -> Path:
    return make_copy(module_dir)


# ------------------------------------------------------------------------------------ fast tests
@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_dry_run_has_every_stage(wf):
    assert dry_run(wf, "configs/tiny.yaml") == ALL_RULES


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_default_config_dry_run_has_every_stage(wf):
    proc = snakemake(wf, "-n", "--cores", "2")
    assert proc.returncode == 0, proc.stderr
    assert job_counts(proc.stdout + proc.stderr) == ALL_RULES


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_distillation_rounds_follow_config(wf, tmp_path):
    cfg = tmp_path / "rounds.yaml"
    cfg.write_text("distillation: {rounds: 3}\noracle: {enabled: false}\n")
    counts = dry_run(wf, "configs/tiny.yaml", str(cfg))
    assert counts["distillation"] == 3 and counts["teacher_labels"] == 3
    assert "oracle" not in counts
    assert counts["evaluate"] == 6  # warmup, naive, self-training, 3 rounds


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_prototypes_fit_on_selects_the_feature_banks(wf, tmp_path):
    """fit_on target adds the target_features job and fits on its bank alone; both fits on source then
    target; the default (source) has no target_features job."""
    from test_rule_params import parsed

    assert "target_features" not in dry_run(wf, "configs/tiny.yaml")
    for fit_on, banks in (("target", ["target_features.h5"]),
                          ("target, target_min_rows: 100", ["source_features.h5", "target_features.h5"]),
                          ("both", ["source_features.h5", "target_features.h5"])):
        cfg = tmp_path / "fit_on.yaml"
        cfg.write_text(f"prototypes: {{fit_on: {fit_on}}}\n")
        counts = dry_run(wf, "configs/tiny.yaml", str(cfg))
        assert counts["target_features"] == 1 and counts["fit_prototypes"] == 1
        assert counts.get("source_features") == (1 if len(banks) == 2 else None)
        with parsed(wf, str(cfg)) as workflow:
            fit = next(r for r in workflow.rules if r.name == "fit_prototypes")
            assert [Path(f).name for f in fit.input["features_h5"]] == banks


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_stylize_method_selects_the_source_images(wf, tmp_path):
    none = tmp_path / "none.yaml"
    none.write_text("stylize: {method: none}\n")
    assert "stylize" not in dry_run(wf, "configs/tiny.yaml", str(none))
    folder = tmp_path / "folder.yaml"
    styl = tmp_path / "stylised"
    styl.mkdir()
    folder.write_text(f"stylize: {{method: folder, folder: {styl}}}\n")
    proc = snakemake(wf, "-n", "-p", "--cores", "2", "--configfile", "configs/tiny.yaml", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "rule stylize" not in proc.stdout
    assert str(styl) in proc.stdout  # an input of the source-reading rules


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_real_dataset_roots_replace_the_synthetic_data(wf, tmp_path):
    src, tgt = tmp_path / "gta5", tmp_path / "cityscapes"
    src.mkdir()
    tgt.mkdir()
    cfg = tmp_path / "real.yaml"
    cfg.write_text(yaml.safe_dump({"synthetic": {"enabled": False},
                                   "data": {"source": {"root": str(src)}, "target": {"root": str(tgt)}}}))
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "synthetic_data" not in job_counts(proc.stdout)
    assert str(src) in proc.stdout and str(tgt) in proc.stdout


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_gpu_resource_follows_use_gpu(wf, tmp_path):
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text("resources: {use_gpu: true, warmup: {threads: 2, mem_mb: 3000, runtime: 7}}\n")
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", str(cfg))
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("rule warmup:", 1)[1].split("\n\n", 1)[0]
    assert "gpu=1" in block and "mem_mb=3000" in block and "runtime=7" in block
    report = proc.stdout.split("rule report:", 1)[1].split("\n\n", 1)[0]
    assert "gpu=" not in report


@pytest.mark.slow  # over 5 s measured (pytest --durations)
@pytest.mark.parametrize("content, needle", [
    ("foo: 1\n", "unknown key foo"),
    ("train: {iteratons: 5}\n", "unknown key train.iteratons"),
    ("train: {log_every: 5}\n", "unknown key train.log_every"),  # moved to runtime
    ("stm: {prototypes: {k: many}}\n", "stm.prototypes.k: 'many' is not of type 'integer'"),
    ("stm: {k: 4}\n", "unknown key stm.k (not in configs/schema.yaml) (stm.k is now stm.prototypes.k"),  # moved
    ("train_overrides: {distillation: {lr: -1}}\n", "train_overrides.distillation.lr"),
    ("stylize: {method: cyclegan}\n", "stylize.method"),
    ("experiment: '..'\n", "experiment: '..' does not match"),   # would write into the project root
    ("experiment: .\n", "experiment: '.' does not match"),
    ("experiment: a/b\n", "experiment: 'a/b' does not match"),
])
def test_bad_config_fails_before_any_job_naming_the_key(wf, tmp_path, content, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    before = sorted((wf / "results").rglob("*"))  # other tests' dry runs on user data write manifests
    proc = snakemake(wf, "--cores", "1", "--configfile", "configs/tiny.yaml", str(cfg))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Invalid config" in out and needle in out, out
    assert "Job stats" not in out
    assert sorted((wf / "results").rglob("*")) == before


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_lint_is_clean(wf):
    proc = snakemake(wf, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_schema_defaults_are_config_yaml():
    """config.yaml spells out the embedded default: exactly what the schema fills into `{}`."""
    from jsonschema import Draft202012Validator, validators

    schema = yaml.safe_load((REPO / "configs/schema.yaml").read_text())
    props = Draft202012Validator.VALIDATORS["properties"]

    def fill(validator, properties, instance, sub):
        for key, value in properties.items():
            if "default" in value and isinstance(instance, dict):
                instance.setdefault(key, json.loads(json.dumps(value["default"])))
        yield from props(validator, properties, instance, sub)

    filled: dict = {}
    validators.extend(Draft202012Validator, {"properties": fill})(schema).validate(filled)
    assert filled == yaml.safe_load((REPO / "config.yaml").read_text())


def test_conftest_schema_defaults_are_the_workflow_slices():
    """The stage tests' slices (conftest.schema_defaults) are what the workflow fills in."""
    from conftest import schema_defaults

    default = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, value in default.items():
        if isinstance(value, dict):
            assert schema_defaults(section) == value, section
    assert schema_defaults("naive", adabn={"enabled": False})["adabn"] == {"enabled": False, "max_images": 100,
                                                                          "batch_size": 4}
    with pytest.raises(KeyError, match="kmeans_k"):
        schema_defaults("stm", kmeans_k=3)


def test_schema_documents_every_key():
    schema = yaml.safe_load((REPO / "configs/schema.yaml").read_text())
    missing = []

    def walk(node, path):
        if node.get("type") == "object" or "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: additionalProperties must be false"
        for key, sub in node.get("properties", {}).items():
            where = f"{path}.{key}".lstrip(".")
            if "default" not in sub:
                missing.append(f"{where}: default")
            if "description" not in sub and "$ref" not in sub:
                missing.append(f"{where}: description")
            walk(sub, where)

    walk(schema, "")
    for name, sub in schema["$defs"].items():
        walk(sub, f"$defs.{name}")
    assert not missing


@pytest.mark.slow  # over 5 s measured (pytest --durations)
@pytest.mark.parametrize("name", ["gta5", "synthia"])
def test_paper_configs_validate(wf, tmp_path, name):
    src, tgt = tmp_path / "src", tmp_path / "cs"
    src.mkdir()
    tgt.mkdir()
    r152, r101 = tmp_path / "r152_1x_sk1.pth", tmp_path / "r101_1x_sk0.pth"
    r152.write_bytes(b"")
    r101.write_bytes(b"")
    roots = tmp_path / "roots.yaml"
    roots.write_text(yaml.safe_dump({"data": {"source": {"root": str(src)}, "target": {"root": str(tgt)}},
                                     "stm": {"features": {"weights": str(r152)}},
                                     "distillation": {"student_weights": str(r101)}}))
    counts = dry_run(wf, f"configs/{name}.yaml", str(roots))
    assert "synthetic_data" not in counts
    assert counts["distillation"] == 2 and counts["evaluate"] == 6
    # the pretrained files are inputs: a missing one stops the DAG before any job
    r101.unlink()
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", f"configs/{name}.yaml", str(roots))
    assert proc.returncode != 0 and "r101_1x_sk0.pth" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ real run
# Config edits against a finished tiny run, and the jobs each must rerun (exactly: nothing upstream).
EXACT_RERUNS = [
    # A distillation key: both rounds, round 2's teacher labels (downstream of round 1), their
    # evaluations and the summary.
    ("distillation: {kd: {weight: 0.5}}\n",
     {"distillation": 2, "teacher_labels": 1, "evaluate": 2, "report": 1, "all": 1}),
    # A pseudo-label key: pseudo labels and everything downstream; not warm-up, STM or baselines.
    ("pseudo_labels: {percentile: 40.0}\n",
     {"pseudo_labels": 1, "self_training": 1, "teacher_labels": 2, "distillation": 2, "evaluate": 3, "report": 1,
      "all": 1}),
    # A prior-alignment key: both label stages that align and what follows them; not the source
    # prior (its own section, `source_prior`).
    ("prior_alignment: {strength: 0.5}\n",
     {"pseudo_labels": 1, "self_training": 1, "teacher_labels": 2, "distillation": 2, "evaluate": 3, "report": 1,
      "all": 1}),
    # A k-means key of the STM: prototypes, maps and what they feed; not the grid features
    # (each STM rule gets only its own sub-section of `stm`).
    ("stm: {prototypes: {k: 4}}\n",
     {"stm_prototypes": 1, "stm_maps": 1, "self_training": 1, "teacher_labels": 2, "distillation": 2, "evaluate": 3,
      "report": 1, "all": 1}),
    # Speed-only knobs live in `runtime`, which is no param: nothing reruns.
    ("runtime: {log_every: 5, checkpoint_every: 7, workers: 1, synthetic_workers: 2, device: cpu,\n"
     "          activation_checkpointing: true, console_every_s: 5}\n", {}),
    # One more distillation round: that round's labels, training and evaluation, and the report;
    # rounds 1 and 2 do not depend on how many rounds follow them.
    ("distillation: {rounds: 3}\n", {"teacher_labels": 1, "distillation": 1, "evaluate": 1, "report": 1, "all": 1}),
    # One stage's train override: that stage and what follows it.
    ("train_overrides: {distillation: {lr: 0.005}}\n", {"distillation": 2, "teacher_labels": 1, "evaluate": 2,
                                                       "report": 1, "all": 1}),
    # A report key touches only the report.
    ("report: {samples: 1}\n", {"report": 1, "all": 1}),
    # A teacher-label key: both rounds' labels (round 2's teacher is round 1's student), both rounds.
    ("teacher_labels: {percentile: 30.0}\n", {"teacher_labels": 2, "distillation": 2, "evaluate": 2, "report": 1,
                                             "all": 1}),
    # The teacher labels' sampling knob is a param too (it moves the per-class thresholds).
    ("teacher_labels: {sample_pixels: 50}\n", {"teacher_labels": 2, "distillation": 2, "evaluate": 2, "report": 1,
                                              "all": 1}),
    # Another val split: its preflight part and every evaluation, no training.
    ("data: {target: {val_split: train}}\n", {"preflight": 1, "evaluate": 6, "report": 1, "all": 1}),
    # A rerun preflight part never hides other reruns (an ancient() edge to one preflight for
    # everything did: Snakemake then skipped every job downstream of it, stm.prototypes.k edit included).
    ("data: {target: {val_split: train}}\nstm: {prototypes: {k: 4}}\n",
     {"preflight": 1, "stm_prototypes": 1, "stm_maps": 1, "self_training": 1, "teacher_labels": 2, "distillation": 2,
      "evaluate": 6, "report": 1, "all": 1}),
]


@pytest.mark.slow
def test_tiny_run_then_exact_reruns(wf, tmp_path):
    proc = snakemake(wf, "--cores", "2", "--configfile", "configs/tiny.yaml", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = wf / "results" / "tiny"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == [
        "source-only", "naive self-training", "BiSMAP self-training", "distillation 1", "distillation 2", "oracle"]
    assert all(r["miou"] is not None and len(r["iou_per_class"]) == 19 for r in summary["models"])
    table = (out / "summary.md").read_text()
    assert "| BiSMAP self-training |" in table
    assert "| BiSMAP self-training |" in proc.stdout + proc.stderr  # printed at the end of the run
    for png in ("figures/miou.png", "figures/samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<td>BiSMAP self-training</td>" in (out / "tables" / "models.html").read_text()
    # every training stage writes TensorBoard event files and its last progress line reaches the console
    assert list((out / "models" / "warmup.pt.tb").glob("events.out.tfevents.*"))
    assert "bismap warmup: [2/2] " in proc.stderr
    # a successful run leaves no temporaries (issue 12), checked its inputs first, keeps attempt logs
    assert not [p for p in wf.rglob(".*") if ".tmp" in p.name or p.name.endswith(".old")]
    for part in ("source", "target", "val"):
        assert json.loads((out / "preflight" / f"{part}.json").read_text())["status"] == "ok"
    assert "===== attempt 1 of warmup" in (wf / "logs" / "tiny" / "warmup.log.attempts").read_text()

    # Nothing changed: nothing to do.
    again = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml")
    assert again.returncode == 0 and job_counts(again.stdout) == {}, again.stdout
    assert "Nothing to be done" in again.stdout + again.stderr

    for edit, expected in EXACT_RERUNS:
        overlay = tmp_path / "edit.yaml"
        overlay.write_text(edit)
        assert dry_run(wf, "configs/tiny.yaml", str(overlay)) == expected, edit

    # `bismap benchmark` reads the rules to rerun from Snakemake's --detailed-summary table.
    from bismap.sweep import rerun_roots
    overlay.write_text("pseudo_labels: {percentile: 40.0}\n")
    summ = snakemake(wf, "--detailed-summary", "--nolock", "--cores", "2", "--configfile", "configs/tiny.yaml",
                     str(overlay))
    assert summ.returncode == 0, summ.stderr[-3000:]
    assert rerun_roots(summ.stdout) == (["pseudo_labels"], [], False), summ.stdout

    # `snakemake --report` builds the HTML report from the marked figures.
    rep = snakemake(wf, "--configfile", "configs/tiny.yaml", "--report", "report.html")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (wf / "report.html").stat().st_size > 10_000
    assert "per_class_iou.html" in (wf / "report.html").read_text()
