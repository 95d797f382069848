"""Which stages an ablation must redo, read from Snakemake's own plan of the reference run.

The ablation's config is pointed at the finished reference run of the same seed and Snakemake is
asked for `--detailed-summary`: a tab-separated table, one row per output file, whose `status`
column gives Snakemake's own provenance verdict for that file and whose `plan` column says whether
the file would be rebuilt. The rules with an own verdict (params changed, rule implementation
changed, set of input files changed, updated input files, missing) are the roots to force; the
rules merely downstream of them are rebuilt by Snakemake anyway ("ok" + "update pending").

Why this interface (measured on Snakemake 9.27.1 with a three-rule chain a -> b -> c after
changing only b's params):
  * `--detailed-summary` / `--summary`: b "params changed / update pending", c "ok / update
    pending", a "ok / no update" -- exactly the answer needed, in a stable tab-separated format.
    A file without provenance records shows "-" in the `input-file(s)` column (and "ok", since
    Snakemake cannot see a params change without records), which is how a reference run that is
    unsafe to copy is recognised.
  * `--list-changes params` listed a, b and c (every output), so it cannot tell roots apart.
  * the dry run's "Reasons:" block is prose meant for people; parsing it was the previous way.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError
from bismap.sweep.spec import experiment_name, overlay, write_overlay

SUMMARY_HEADER = "output_file\tdate\trule\tlog-file(s)\tinput-file(s)\tshellcmd\tstatus\tplan"
# `status` values that mean "this rule's own output is out of date", not merely downstream of one.
OWN_REASONS = ("params changed", "rule implementation changed", "set of input files changed",
               "updated input files", "missing")
NOT_FILES = ("file local to node", "removed temp file", "pipe file", "service file")


def parse_summary(text: str) -> list[dict]:
    """The rows of `snakemake --detailed-summary` output (other lines are ignored)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == SUMMARY_HEADER)
    except StopIteration:
        return []
    keys = SUMMARY_HEADER.split("\t")
    rows = []
    for line in lines[start + 1:]:
        fields = line.split("\t")
        if len(fields) != len(keys):
            continue
        rows.append(dict(zip(keys, fields)))
    return rows


def rerun_roots(summary_output: str) -> tuple[list[str], list[str], bool]:
    """(rules to rerun for their own sake, rules with a missing output, whether records are missing).

    Records are missing when an existing output has no provenance entry (its `input-file(s)` is
    "-"): then Snakemake cannot see a params change, so an empty root list proves nothing.
    """
    roots: set[str] = set()
    missing: set[str] = set()
    no_records = False
    for row in parse_summary(summary_output):
        status = row["status"]
        if status in NOT_FILES:
            continue
        if status == "missing":
            missing.add(row["rule"])
        elif row["input-file(s)"] == "-":
            no_records = True
        if status in OWN_REASONS and row["plan"] == "update pending":
            roots.add(row["rule"])
    return sorted(roots), sorted(missing), no_records


def snakemake_cmd(snakemake: str, spec: dict, overlay_path: Path, extra_args: Sequence[str]) -> list[str]:
    return [snakemake, "--cores", str(spec["cores"]), "--configfile", str(spec["base_config"]),
            *[str(f) for f in spec.get("configfiles", [])], str(overlay_path), *extra_args]


def reuse_plan(spec: dict, ablation: str, seed: Any, snakemake: str, results_root: Path) -> list[str] | None:
    """Rules to force in a copy of the reference run of this seed, or None to run from scratch.

    The ablation's config is summarised against the finished reference run (`full`, same seed):
    what Snakemake would redo there is what differs. None when there is no finished reference run.
    """
    ref = spec.get("reference", "full")
    if ablation == ref or not spec.get("reuse", True) or ref not in spec["ablations"]:
        return None
    ref_exp = experiment_name(spec["prefix"], ref, seed)
    if not (results_root / ref_exp / "summary.json").is_file():
        return None
    cfg = overlay(spec, ablation, seed)
    cfg["experiment"] = ref_exp
    probe = write_overlay(cfg, Path(spec["out"]) / "configs"
                          / f"probe_{experiment_name(spec['prefix'], ablation, seed)}.yaml")
    cmd = snakemake_cmd(snakemake, spec, probe, ["--detailed-summary", "--nolock"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"benchmark: summary of {ablation} against {ref_exp} failed:\n{proc.stderr[-2000:]}")
    roots, missing, no_records = rerun_roots(proc.stdout)
    if missing:
        # the reference finished (its summary.json exists), so these are jobs the ablation adds (e.g. the
        # source prior of prior alignment) or files deleted since: either way they run in the copy
        print(f"benchmark: {ablation} adds or rebuilds {', '.join(missing)} in the copy of {ref_exp}", flush=True)
        roots = sorted(set(roots) | set(missing))
    if no_records or (spec["ablations"][ablation] and not roots):
        # without provenance records Snakemake cannot see a params change: copying would be unsafe
        print(f"benchmark: {ref_exp} lacks Snakemake provenance records; {ablation} runs from scratch", flush=True)
        return None
    return roots
