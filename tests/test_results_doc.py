"""docs/results.md is generated from benchmark_records/ and must not drift from the records."""
from __future__ import annotations

import re

from bismap.io import write_json
from bismap.sweep import results_doc


def test_results_md_is_the_records(tmp_path):
    out = tmp_path / "results.md"
    assert results_doc.main(["--out", str(out)]) == 0
    assert out.read_bytes() == results_doc.OUT.read_bytes(), (
        f"docs/results.md is out of date with benchmark_records/; regenerate it with `{results_doc.COMMAND}`")
    text = out.read_text()
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text), "commit hash"
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), "date"


def _record(root, ablation, seed, naive, bismap):
    exp = f"bench_{ablation}_s{seed}"
    models = [{"model": m, "miou_headline": v} for m, v in
              (("source-only", 0.30), ("naive self-training", naive), ("BiSMAP self-training", bismap),
               ("oracle", 0.60))]
    write_json(root / "default" / f"{exp}.json",
               {"record_version": 1, "experiment": exp, "preset": "default", "ablation": ablation, "seed": seed,
                "cpu": "Test CPU", "cpu_type": "x86_64 family 1 model 2 avx2", "summary": {"models": models}})


def test_known_mean_std_and_interval(tmp_path):
    # BiSMAP ST 0.41, 0.43, 0.48: mean 44.0, sample std sqrt((9 + 1 + 16) / 2) = 3.6;
    # minus naive (0.40, 0.40, 0.40): +1, +3, +8, mean +4.0, std 3.6056, t(2) = 4.303,
    # half-width 4.303 * 3.6056 / sqrt(3) = 8.96 -> [-5.0, +13.0]
    for seed, value in zip((100, 101, 102), (0.41, 0.43, 0.48)):
        _record(tmp_path, "full", seed, 0.40, value)
    _record(tmp_path, "no_maps", 100, 0.40, 0.45)
    out = tmp_path / "results.md"
    assert results_doc.main(["--records", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| `full` | 100, 101, 102 | 30.0 ± 0.0 | 40.0 ± 0.0 | 44.0 ± 3.6 | 60.0 ± 0.0 |" in text
    assert "| `full` | +4.0 [-5.0, +13.0] (n=3) |" in text
    assert "| `no_maps` | +4.0 (n=1) |" in text   # 0.45 - 0.41, seed 100 only
    assert "Test CPU (x86_64 family 1 model 2 avx2)" in text
    assert "bismap benchmark --preset default --ablation full --seed 100 --seed 101 --seed 102\n" in text
    assert "--ablation no_maps --seed 100\n" in text
