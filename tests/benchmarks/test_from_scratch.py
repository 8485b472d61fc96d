"""`benchmarks/from_scratch.py` at a tiny shape: both `ittt pretrain` runs see the same batches,
and the Fig. 2 table pairs the two models on the same passages."""

import json
import random
from pathlib import Path

import pytest

from tests.benchmarks.conftest import load_benchmark


def write_books(folder: Path, count: int, seed: int) -> list[str]:
    """Plain-text documents long enough for several passages of 65 tokens."""
    rng = random.Random(seed)
    words = "the lord said unto moses and aaron speak to the children of israel saying this is the law".split()
    folder.mkdir()
    for i in range(count):
        (folder / f"book{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(600)))
    return [str(folder)]


@pytest.mark.integration
def test_tiny_run_pairs_identical_batches_and_passages(tmp_path):
    bench = load_benchmark("from_scratch")
    argv = ["--out", str(tmp_path / "out"), "--train-data", *write_books(tmp_path / "train", 6, 0), "--heldout-data", *write_books(tmp_path / "held", 2, 1)]
    argv += "--vocab 300 --hidden 32 --layers 2 --heads 2 --window 8 --row-length 64 --steps 3 --batch 2 --chunk 16 --block 16 --passages 6 --threads 1".split()
    summary = bench.main(argv)

    swa, ttt = (summary["runs"][name] for name in bench.NAMES)
    assert summary["identical_batches"] and swa["digests"] == ttt["digests"]
    assert len(swa["digests"]) == 3 and len(set(swa["digests"])) == 3  # one digest per step, and the steps' batches differ
    rows = summary["fig2"]["rows"]
    assert [r["context"] for r in rows] == [0, 8, 16, 32, 48]
    for r in rows:
        assert r["passages"] == summary["fig2"]["passages"] == 6
        # the mean of the per-passage differences is the difference of the means (the same passages)
        assert r["difference"] == pytest.approx(r["SWA + TTT"]["loss"] - r["SWA"]["loss"], abs=1e-9)
        lo, hi = r["difference_interval"]
        assert lo <= r["difference"] <= hi
    inside = rows[1]  # context 8, the window: the growth past the window is measured from here
    assert inside["growth"] == 0 and inside["growth_interval"] == [0, 0]
    assert rows[-1]["growth"] == pytest.approx(rows[-1]["difference"] - inside["difference"], abs=1e-9)
    out = tmp_path / "out"
    assert "Identical batches in both runs: yes" in (out / "report.md").read_text()
    assert (out / "fig2.png").stat().st_size > 0 and json.loads((out / "results.json").read_text())["identical_batches"]
    assert (out / "runs" / "ttt" / "final" / "config.json").is_file()
