"""Stage: read every input file the run will use before any training starts, and report all problems at once.

Every image and label of every split the run reads (source with its stylized images when they come
from a user folder, target train, target val and its ground truth) is decoded in full in a thread
pool of the rule's size, labels are mapped exactly as training maps them (an unknown label value is a
problem), and pretrained weights files are loaded into the network they are meant for (key layout).
A missing split, a truncated file or a bad label value is then found in minutes instead of after hours
of warm-up. Problems stop the workflow with one line listing them (all of them are in the log);
warnings (GTA5 files without a partner, image/label size mismatches) are repeated on the console.

Writes `preflight/<part>.json` (per dataset: images, labels, problems, warnings; per weights file: the
result; totals and seconds) and `<part>.md`, the human summary the HTML report shows.
"""
from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bismap.io import InputError, atomic_path, write_json

# At most this many problems are spelled out in the one-line error (all of them are in the log and report).
_SHOWN_IN_ERROR = 20


def _check_item(ds, index: int) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one dataset item: full decode of image and label, label values mapped."""
    from bismap.data.image_io import read_rgb

    entry = ds.entries[index]
    problems: list[str] = []
    notes: list[str] = []
    image = None
    try:
        image = read_rgb(entry.image)
    except InputError as e:
        problems.append(str(e))
    except OSError as e:
        problems.append(f"{entry.image}: {e.strerror or e}")
    if ds.label_reader is not None and entry.label is not None:
        try:
            label = ds.label_reader(entry.label)
            # (GTA5's reader already counts its size mismatches in one warning)
            if image is not None and label.shape[:2] != image.shape[:2] and ds.kind != "gta5":
                notes.append(f"{entry.label}: label {label.shape[0]}x{label.shape[1]} differs from its image "
                             f"{image.shape[0]}x{image.shape[1]} (resized nearest)")
        except InputError as e:
            problems.append(str(e))
        except OSError as e:
            problems.append(f"{entry.label}: {e.strerror or e}")
    return problems, notes


def check_dataset(name: str, spec: dict, pool: ThreadPoolExecutor) -> dict:
    """Open `spec` as training would and read every file of it; a dict for the report."""
    from bismap.data import open_dataset

    result: dict[str, Any] = {"spec": spec, "images": 0, "labels": 0, "problems": [], "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = open_dataset(spec)
        except InputError as e:
            result["problems"].append(str(e))
            return result
    result["warnings"] += [str(w.message) for w in caught]
    result["images"] = len(ds)
    result["labels"] = sum(1 for e in ds.entries if e.label is not None) if ds.label_reader is not None else 0
    for problems, notes in pool.map(lambda i: _check_item(ds, i), range(len(ds))):
        result["problems"] += problems
        result["warnings"] += notes
    return result


def check_weights(name: str, what: dict) -> dict:
    """Load a pretrained weights file into the network it is for; {"file", "ok", "problem"}."""
    result = {"file": what["file"], "ok": True, "problem": None}
    try:
        if what["kind"] == "model":
            from bismap.models import build_model

            build_model(what["model"])
        else:
            from bismap.models import load_pretrained
            from bismap.models.simclr import SimCLRResNet

            stm = what["stm"]
            net = SimCLRResNet(int(stm["depth"]), int(stm["width_multiplier"]), float(stm["sk_ratio"]))
            load_pretrained(net, what["file"], key=stm["weights_key"])
    except InputError as e:
        result.update(ok=False, problem=str(e))
    return result


def weights_to_check(model: dict, student: dict, stm: dict) -> dict[str, dict]:
    """The pretrained files the run loads: model.weights, the distillation student's, SimCLRv2 for STM."""
    out: dict[str, dict] = {}

    def is_file(value: Any) -> bool:
        return value is not None and str(value).lower() not in ("none", "imagenet")

    if is_file(model.get("weights")):
        out["model.weights"] = {"kind": "model", "file": str(model["weights"]), "model": dict(model)}
    s_weights = student.get("student_weights")
    if is_file(s_weights) and s_weights != model.get("weights"):
        cfg = {**model, "weights": s_weights}
        if student.get("student_backbone"):
            cfg["backbone"] = student["student_backbone"]
        out["distillation.student_weights"] = {"kind": "model", "file": str(s_weights), "model": cfg}
    if stm.get("extractor") == "simclr" and is_file(stm.get("weights")):
        out["stm.features.weights"] = {"kind": "simclr", "file": str(stm["weights"]), "stm": dict(stm)}
    return out


def summary_markdown(report: dict) -> str:
    lines = [f"# Preflight: {report['status']}", "",
             f"Every file of every split was read in {report['seconds']:.1f} s with {report['threads']} thread(s): "
             f"{report['totals']['images']} images, {report['totals']['labels']} labels, "
             f"{len(report['problems'])} problem(s), {len(report['warnings'])} warning(s).", "",
             "| dataset | root | images | labels | problems | warnings |", "|---|---|---:|---:|---:|---:|"]
    for name, d in report["datasets"].items():
        lines.append(f"| {name} | {d['spec'].get('root')} | {d['images']} | {d['labels']} | {len(d['problems'])} | "
                     f"{len(d['warnings'])} |")
    if report["weights"]:
        lines += ["", "| weights | file | result |", "|---|---|---|"]
        for name, w in report["weights"].items():
            lines.append(f"| {name} | {w['file']} | {'ok' if w['ok'] else w['problem']} |")
    for title, items in (("Problems", report["problems"]), ("Warnings", report["warnings"])):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in items]
    return "\n".join(lines) + "\n"


def run(*, datasets: dict[str, dict], model: dict, student: dict, stm: dict, out_report: str | Path,
        out_summary: str | Path, threads: int = 1) -> dict:
    """Check `datasets` (name -> dataset spec) and the weights files; write the report; InputError on problems."""
    start = time.perf_counter()
    report: dict[str, Any] = {"datasets": {}, "weights": {}, "threads": int(threads)}
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        for name, spec in datasets.items():
            print(f"preflight: reading every file of {name} ({spec.get('root')})", flush=True)
            report["datasets"][name] = check_dataset(name, spec, pool)
    for name, what in weights_to_check(model, student, stm).items():
        print(f"preflight: loading {name} ({what['file']})", flush=True)
        report["weights"][name] = check_weights(name, what)
    problems = [p for d in report["datasets"].values() for p in d["problems"]]
    problems += [w["problem"] for w in report["weights"].values() if not w["ok"]]
    notes = [w for d in report["datasets"].values() for w in d["warnings"]]
    report.update(problems=problems, warnings=notes, seconds=round(time.perf_counter() - start, 2),
                  status="problems found" if problems else "ok",
                  totals={"images": sum(d["images"] for d in report["datasets"].values()),
                          "labels": sum(d["labels"] for d in report["datasets"].values())})
    for p in problems:
        print(f"preflight: problem: {p}", flush=True)
    for w in notes:
        print(f"preflight: warning: {w}", flush=True)
        warnings.warn(w, UserWarning, stacklevel=1)  # stage_logging repeats warnings on the console
    print(f"preflight: {report['totals']['images']} images, {report['totals']['labels']} labels, "
          f"{len(problems)} problem(s), {len(notes)} warning(s) in {report['seconds']} s", flush=True)
    if problems:
        shown = "; ".join(problems[:_SHOWN_IN_ERROR])
        more = (f"; ... and {len(problems) - _SHOWN_IN_ERROR} more (see the log)"
                if len(problems) > _SHOWN_IN_ERROR else "")
        raise InputError(f"preflight found {len(problems)} problem(s) in the inputs: {shown}{more}")
    write_json(out_report, report)
    with atomic_path(out_summary) as tmp:
        tmp.write_text(summary_markdown(report))
    return report
