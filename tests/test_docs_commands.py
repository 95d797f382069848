"""Every command shown in the README and docs/ is run here, in a safe form; every relative link resolves.

Commands come from the ```bash blocks of README.md and docs/*.md (one command per line, `\\`
continuations joined, trailing `# comments` dropped, a leading `.venv/bin/` ignored). Each runs in
a copy of the workflow (as tests/test_workflow.py does) so the checkout stays clean:

- `snakemake ...`: as a dry run (`-n` added; `--cores 1` when neither cores nor a profile is given);
- `bismap benchmark ...`: with `--dry-run` (it prints the snakemake commands and writes the overlays);
  `--aggregate-only` runs as written (it only reads results);
- `bismap synth ...`: on tiny data (a few 32x64 images);
- `python -m MODULE ...`: with `--help`, and every `--option` of the command must be in that help;
- `cp ...`: as written.

Commands that cannot run here are in SKIP with the reason; a command that is neither runnable by
the rules above nor listed in SKIP fails the test, so a new command in the docs needs one or the
other. Commands containing `--config` are left to the config-override tests (tests/test_workflow.py
and friends) and not run here.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    from test_workflow import make_copy
except ImportError:  # the workflow helpers may live in conftest.py
    from conftest import make_copy

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

NEEDS_PAPER_DATA = ("needs GTA5/SYNTHIA + Cityscapes and the pretrained SimCLRv2 files; the paper configs are "
                    "dry-run against fake roots by tests/test_workflow.py::test_paper_configs_validate")
NEEDS_OWN_DATA = ("needs your data under /data/my_source and /data/my_target; the same config is dry-run "
                  "against fake data in those layouts by tests/test_own_data.py")
NEEDS_ROOT_SLURM = "starts or stops SLURM daemons as root; run by tests/test_slurm.py where root (skipped otherwise)"

# command (normalised: `.venv/bin/` dropped, single spaces) -> why it is not run here
SKIP: dict[str, str] = {
    'python3 -m venv .venv && pip install -e . && snakemake --cores 2':
        "creates a venv, installs from the network and runs the full 15-minute pipeline; the same DAG is "
        "dry-run by `snakemake -n` here and run on tiny data by tests/test_workflow.py",
    "python3 -m venv .venv && pip install -e .[test] && python -m pytest -q -ra":
        "is this test suite (what .ci/run runs; test_readme_test_command_is_what_ci_runs checks they match)",
    "export BISMAP_SLURM_ACCOUNT=my_project BISMAP_SLURM_PARTITION=batch":
        "sets the account/partition for a real cluster; nothing to run",
    "pip install snakemake-executor-plugin-slurm": "installs from the network (the plugin is a project dependency)",
    "snakemake -n --cores 4 --configfile configs/own_data.yaml": NEEDS_OWN_DATA,
    "snakemake --cores 4 --configfile configs/own_data.yaml": NEEDS_OWN_DATA,
    "snakemake --profile profiles/local --configfile configs/gta5.yaml configs/my_roots.yaml": NEEDS_PAPER_DATA,
    "snakemake --profile profiles/slurm --configfile configs/gta5.yaml configs/my_roots.yaml": NEEDS_PAPER_DATA,
    "snakemake --profile profiles/slurm --configfile configs/gta5.yaml": NEEDS_PAPER_DATA,
    "snakemake --profile profiles/slurm --configfile configs/gta5.yaml --until warmup": NEEDS_PAPER_DATA,
    "snakemake --profile profiles/slurm --configfile configs/gta5.yaml -R self_training": NEEDS_PAPER_DATA,
    "snakemake --profile profiles/slurm --configfile configs/gta5.yaml results/gta5/models/warmup.pt": NEEDS_PAPER_DATA,
    "sudo bash tests/cluster/slurm_up.sh": NEEDS_ROOT_SLURM,
    "sudo bash tests/cluster/slurm_down.sh": NEEDS_ROOT_SLURM,
    "pytest -m slurm tests/test_slurm.py": "part of this test suite (tests/test_slurm.py)",
}

# A link target that may dangle until another branch adds it.


def _logical_lines(block: str) -> list[str]:
    lines, cur = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append(cur + line)
        cur = ""
    if cur:
        lines.append(cur)
    return lines


def normalise(line: str) -> str | None:
    """The command of one line, comment dropped and `.venv/bin/` removed; None for blank or comment."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split()
    if not tokens:
        return None
    return " ".join(t[len(".venv/bin/"):] if t.startswith(".venv/bin/") else t for t in tokens)


def doc_commands() -> list[tuple[str, str]]:
    """(file relative to the repo, normalised command) of every command in the ```bash blocks."""
    out = []
    for path in DOC_FILES:
        for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.S | re.M):
            for line in _logical_lines(block):
                cmd = normalise(line)
                if cmd:
                    out.append((str(path.relative_to(REPO)), cmd))
    return out


COMMANDS = doc_commands()


def _runnable(tokens: list[str]) -> bool:
    if tokens[0] == "snakemake" or tokens[0] == "cp":
        return True
    if tokens[0] == "bismap" and len(tokens) > 1 and tokens[1] in ("benchmark", "synth"):
        return True
    return tokens[:2] == ["python", "-m"] and len(tokens) > 2


def test_every_command_is_run_or_skipped_with_a_reason():
    assert COMMANDS, "no ```bash blocks found"
    unknown = [f"{f}: {c}" for f, c in COMMANDS
               if "--config" not in shlex.split(c) and c not in SKIP and not _runnable(shlex.split(c))]
    assert not unknown, ("commands in the docs that this test can neither run nor finds in SKIP (add a runner "
                         "or a SKIP entry with the reason):\n" + "\n".join(unknown))
    shown = {c for _, c in COMMANDS}
    stale = [c for c in SKIP if c not in shown]
    assert not stale, f"SKIP entries no document shows any more: {stale}"


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    ci_cmd = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    readme = (REPO / "README.md").read_text()
    assert ci_cmd.replace("pip install -q ", "pip install ") in readme


def test_readme_example_config_is_the_file():
    """The README shows configs/own_data.example.yaml in full (comments aside)."""
    readme = (REPO / "README.md").read_text()
    shown = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", readme, flags=re.S | re.M)]
    assert yaml.safe_load((REPO / "configs" / "own_data.example.yaml").read_text()) in shown


@pytest.fixture(scope="module")
def docs_wf(module_dir) -> Path:
    wf = make_copy(module_dir)
    shutil.copytree(REPO / "profiles", wf / "profiles")
    return wf


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)


def safe_form(tokens: list[str], tmp: Path) -> list[str]:
    """The command as it runs here (see the module docstring)."""
    if tokens[0] == "snakemake":
        args = list(tokens[1:])
        if "-n" not in args and "--dry-run" not in args:
            args.insert(0, "-n")
        if not any(a in args for a in ("--cores", "-c", "--profile")):
            args += ["--cores", "1"]
        return [sys.executable, "-m", "snakemake", *args]
    if tokens[0] == "bismap":
        args = [sys.executable, "-m", "bismap", *tokens[1:]]
        if tokens[1] == "benchmark" and "--aggregate-only" not in tokens:
            args.append("--dry-run")
        if tokens[1] == "synth":
            i = args.index("--out")
            args[i + 1] = str(tmp / "synth")
            args += ["--n-source", "2", "--n-target-train", "2", "--n-target-val", "2", "--height", "32",
                     "--width", "64", "--workers", "1"]
        return args
    if tokens[:2] == ["python", "-m"]:
        return [sys.executable, "-m", tokens[2], "--help"]
    if tokens[0] == "cp":
        return ["cp", *tokens[1:]]
    raise AssertionError(f"no runner for {tokens}")


@pytest.mark.slow
@pytest.mark.parametrize("source,command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_doc_command_runs(source, command, docs_wf, tmp_path):
    tokens = shlex.split(command)
    if "--config" in tokens:
        pytest.skip("--config overrides are covered by the config-override tests")
    if command in SKIP:
        pytest.skip(SKIP[command])
    proc = _run(safe_form(tokens, tmp_path), docs_wf)
    assert proc.returncode == 0, f"{source}: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    if tokens[:2] == ["python", "-m"]:
        missing = [t.split("=")[0] for t in tokens[3:] if t.startswith("--") and t.split("=")[0] not in proc.stdout]
        assert not missing, f"{source}: {command}: options not in --help: {missing}"


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # not inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # web links and anchors in the same file
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"


def test_readme_is_one_screenful_without_hashes_or_dates():
    """The README is what a user needs first; dated, per-commit and per-CPU results live in docs/."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 130
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", readme), "commit hash"
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", readme), "date"
    assert not re.findall(r"\b(?:EPYC|Xeon|Zen \d)\b", readme), "CPU model"
