"""The report stage's table and figures, on hand-made metrics (no training)."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bismap.data.labels import CLASS_NAMES
from bismap.io import InputError
from bismap.stages import report


def metrics(miou: float, headline: str = "miou") -> dict:
    return {"headline": headline, "miou": miou, "miou16": miou + 0.01, "miou13": miou + 0.02,
            "miou16_ignore_missing": miou + 0.03, "miou13_ignore_missing": miou + 0.04,
            "miou_present": miou + 0.05, "pixel_accuracy": 0.9,
            "iou_per_class": {name: (None if i == 16 else miou) for i, name in enumerate(CLASS_NAMES)}}


def test_table_has_every_model_and_class():
    s = report.build_summary(experiment="x", models=["source-only", "oracle"], metrics=[metrics(0.3), metrics(0.5)],
                             quality_labels=["GMM pseudo labels"], quality=[{"coverage": 0.5, "accuracy": 0.8,
                                                                             "miou": None, "images": 3}],
                             protocol="cityscapes19")
    text = report.summary_markdown(s)
    assert "| source-only | 30.0 | 35.0 | 90.0 |" in text
    assert "| train | - | - |" in text  # absent class
    assert all(f"| {name} |" in text for name in CLASS_NAMES)
    assert "| GMM pseudo labels | 50.0 | 80.0 | - |" in text


def test_synthia_protocol_reports_16_and_13_classes():
    s = report.build_summary(experiment="x", models=["m"], metrics=[metrics(0.3, "miou16")], quality_labels=[],
                             quality=[], protocol="synthia")
    assert s["models"][0]["miou_headline"] == pytest.approx(0.31)
    text = report.summary_markdown(s)
    assert "mIoU-16 | mIoU-13 | mIoU-16 (missing ignored)" in text
    assert "| m | 31.0 | 32.0 | 33.0 | 34.0 | 30.0 | 90.0 |" in text


def test_mismatched_inputs_are_an_input_error():
    with pytest.raises(InputError):
        report.build_summary(experiment="x", models=["a", "b"], metrics=[metrics(0.1)], quality_labels=[],
                             quality=[], protocol="cityscapes19")


def test_figures_are_pngs(tmp_path):
    out = tmp_path / "bars.png"
    report.bar_plot(["source-only", "oracle", "missing"], [0.2, 0.6, None], "title", out)
    assert Image.open(out).size[0] == 640
    img = np.zeros((16, 32, 3), np.uint8)
    label = np.full((16, 32), 255, np.uint8)
    label[:8] = 3
    m = report.mosaic([[img, report._label_rgb(label, (16, 32))], [img]], ["a", "b"], height=24)
    assert m.size[1] == 18 + 2 * (24 + 4) + 4
    arr = np.asarray(report._label_rgb(label, (16, 32)))
    assert (arr[12, 0] == 255).all()  # ignore is white


def test_stage_logging_turns_input_error_into_one_line(tmp_path, capsys):
    from bismap.workflow.stage_logging import stage_logging

    log = tmp_path / "x.log"
    smk = SimpleNamespace(log=[str(log)], rule="demo", threads=1)
    err = io.StringIO()
    old = sys.__stderr__
    sys.__stderr__ = err
    try:
        with pytest.raises(SystemExit) as exc:
            with stage_logging(smk):
                print("working")
                raise InputError("data/x.png: truncated")
    finally:
        sys.__stderr__ = old
    assert exc.value.code == 1
    assert err.getvalue() == "bismap demo: error: data/x.png: truncated\n"
    text = log.read_text()
    assert "working" in text and "error: data/x.png: truncated" in text and "Traceback" not in text


def test_html_tables_hold_every_model_and_class_escaped(tmp_path):
    s = report.build_summary(experiment="x<y", models=["source-only", "a&b"], metrics=[metrics(0.3), metrics(0.5)],
                             quality_labels=[], quality=[], protocol="cityscapes19")
    tables = report.summary_tables(s)
    assert set(tables) == {"models", "per_class_iou", "label_quality"}
    page = report.table_html("x<y", *tables["per_class_iou"])
    assert all(f"<td>{name}</td>" in page for name in CLASS_NAMES)
    assert "<th>a&amp;b</th>" in page and "<title>x&lt;y</title>" in page and "a&b" not in page
    models = report.table_html("x", *tables["models"])
    assert "<tr><td>source-only</td><td>30.0</td><td>35.0</td><td>90.0</td></tr>" in models
    assert "`" not in models
    empty = report.table_html("x", *tables["label_quality"])
    assert '<td colspan="4">none</td>' in empty


def test_console_progress_repeats_progress_lines_at_most_every_interval(monkeypatch):
    from bismap.workflow import stage_logging as sl

    shown = []
    monkeypatch.setattr(sl, "_console", shown.append)
    now = [0.0]
    sink = sl.ConsoleProgress("warmup", 60, clock=lambda: now[0])
    for i, t in zip(range(1, 6), (0, 30, 61, 90, 95)):
        now[0] = t
        sink.write(f"[{i}/5] 1.00 it/s ETA 0:0{5 - i} | loss 1.0 | lr 0.1\n")
    sink.write("not a progress line\n[2/5] without the estimate\n")
    sink.write("[5/5] 1.00 it/s ETA 0:00 |")  # no newline yet: held back
    assert shown == ["bismap warmup: [1/5] 1.00 it/s ETA 0:04 | loss 1.0 | lr 0.1",
                     "bismap warmup: [3/5] 1.00 it/s ETA 0:02 | loss 1.0 | lr 0.1",
                     "bismap warmup: [5/5] 1.00 it/s ETA 0:00 | loss 1.0 | lr 0.1"]
    off = sl.ConsoleProgress("warmup", 0)
    off.write("[1/1] 1.00 it/s ETA 0:00 | x\n")
    assert len(shown) == 3
