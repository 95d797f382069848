"""Workflow: `snakemake -n` time, and the default run's critical path from its benchmark files.

`snakemake -n` runs in the repository with config.yaml (on a finished run it only checks
timestamps; without one it plans every job). The critical path is the longest chain of the
job graph (`snakemake --dag`: distillation rounds make the rule graph cyclic) weighted by each
job's wall time from `benchmarks/<experiment>/<rule>[_<wildcards>].tsv`; the stage table sums
the jobs of one rule.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from bismap.bench.common import REPO, default_config, table


def _snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def stage_times(bench_dir: Path, rules: list[str]) -> dict[str, float]:
    """Seconds per rule: the `s` column of its tsv files (rule name, optionally followed by _<wildcards>)."""
    out: dict[str, float] = {}
    for f in sorted(bench_dir.glob("*.tsv")):
        rule = next((r for r in sorted(rules, key=len, reverse=True) if f.stem == r or f.stem.startswith(r + "_")),
                    f.stem)
        with f.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                out[rule] = out.get(rule, 0.0) + float(row["s"])
    return out


def rule_graph(dot: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    nodes = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)
    return nodes, [(nodes[a], nodes[b]) for a, b in edges if a in nodes and b in nodes]


def job_graph(dot: str, bench_dir: Path) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Jobs of `snakemake --dag` as "rule[_wildcards]" names with their seconds, and the edges between them.

    A job's benchmark file is <rule>.tsv, <rule>_<values>.tsv or <rule>_<name><value>.tsv (teacher_labels_r1).
    The dag labels show only wildcards a job does not share with its inputs' jobs (distillation's `r`
    comes from teacher_labels), so a job also tries the wildcards of the jobs it depends on.
    """
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    edges = [(a, b) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M) if a in labels and b in labels]
    own = {n: [w.split(": ", 1) for w in label.split("\\n")[1:]] for n, label in labels.items()}
    parents: dict[str, list[str]] = {}
    for a, b in edges:
        parents.setdefault(b, []).append(a)
    names, times = {}, {}
    for node, label in labels.items():
        rule = label.split("\\n")[0]
        inherited = [p for parent in parents.get(node, []) for p in own[parent] if p[0] not in dict(own[node])]
        stems = [rule]
        for pairs in [own[node]] + [own[node] + [p] for p in inherited]:
            if pairs:
                stems += [f"{rule}_" + "_".join(v for _, v in pairs), f"{rule}_" + "_".join(k + v for k, v in pairs)]
        names[node] = next((st for st in stems if (bench_dir / f"{st}.tsv").is_file()), stems[-1])
        times[names[node]] = sum(_seconds(bench_dir / f"{names[node]}.tsv"))
    return times, [(names[a], names[b]) for a, b in edges]


def _seconds(tsv: Path) -> list[float]:
    if not tsv.is_file():
        return []
    with tsv.open() as fh:
        return [float(row["s"]) for row in csv.DictReader(fh, delimiter="\t")]


def critical_path(times: dict[str, float], edges: list[tuple[str, str]]) -> tuple[float, list[str]]:
    preds: dict[str, list[str]] = {}
    for a, b in edges:
        preds.setdefault(b, []).append(a)

    @lru_cache(maxsize=None)
    def longest(rule: str) -> tuple[float, tuple[str, ...]]:
        best = max((longest(p) for p in preds.get(rule, [])), default=(0.0, ()))
        return best[0] + times.get(rule, 0.0), best[1] + (rule,)

    rules = set(times) | {r for e in edges for r in e}
    total, path = max((longest(r) for r in rules), default=(0.0, ()))
    return total, list(path)


def run(experiment: str | None = None) -> dict[str, Any]:
    """`experiment`: a finished run of config.yaml under another name (e.g. a `bismap benchmark` run)."""
    exp = experiment or default_config()["experiment"]
    bench_dir = REPO / "benchmarks" / str(exp)
    t0 = time.perf_counter()
    dry = _snakemake("-n", "--quiet", "rules", *(("--config", f"experiment={exp}") if experiment else ()))
    dry_s = time.perf_counter() - t0
    jobs = re.findall(r"^(\S+)\s+(\d+)$", dry.stdout, re.M)
    n_jobs = sum(int(n) for r, n in jobs if r != "total")
    finished = bench_dir.is_dir() and any(bench_dir.glob("*.tsv"))
    out: dict[str, Any] = {"experiment": exp, "dry_run_s": dry_s, "dry_run_rc": dry.returncode, "jobs_to_run": n_jobs,
                           "finished_run": finished}
    if finished:
        exp_args = ("--config", f"experiment={exp}") if experiment else ()
        nodes, _ = rule_graph(_snakemake("--rulegraph", *exp_args).stdout)
        times = stage_times(bench_dir, list(nodes.values()))
        job_times, job_edges = job_graph(_snakemake("--dag", *exp_args).stdout, bench_dir)
        total, path = critical_path(job_times, job_edges)
        out.update(stages=[{"rule": r, "s": s} for r, s in sorted(times.items(), key=lambda kv: -kv[1])],
                   critical_s=total, critical_path=path, sum_s=sum(times.values()))
    print(f"bench workflow: snakemake -n {dry_s:.1f} s (rc {dry.returncode}, {n_jobs} jobs to run); "
          + (f"critical path {out['critical_s']:.0f} s" if finished else f"no finished run under {bench_dir}"),
          flush=True)
    return out


def markdown(res: dict) -> str:
    s = (__doc__.split("\n\n", 1)[1].strip() + f"\n\n`snakemake -n` (experiment `{res['experiment']}`): "
         f"{res['dry_run_s']:.1f} s, exit code {res['dry_run_rc']}, {res['jobs_to_run']} jobs to run"
         + (" (a finished run)." if res["finished_run"] else
            f". **No finished run exists** under `benchmarks/{res['experiment']}/` in this checkout, so the dry run "
            "planned a full run and there is no critical path to report; run `snakemake --cores 2` first."))
    if res["finished_run"]:
        s += (f"\n\nCritical path {res['critical_s']:.0f} s of {res['sum_s']:.0f} s summed stage time: "
              + " -> ".join(res["critical_path"]) + "\n\n" + table(res["stages"], [("rule", "stage"), ("s", "s")]))
    return s
