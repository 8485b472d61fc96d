"""`benchmarks/gpu.py --tiny` on the CPU: its bf16-against-float64 checks pass and its tables print
(the CUDA-graph part says it was skipped). On a GPU the same script runs the full shapes."""

import pytest

from tests.benchmarks.conftest import load_benchmark


@pytest.mark.integration
def test_the_tiny_run_passes_its_accuracy_checks_and_prints_its_tables(capsys, monkeypatch):
    gpu = load_benchmark("gpu", monkeypatch)  # its dataclasses look their module up in sys.modules
    assert gpu.main(["--tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line.count("|") == 7 and "relative error" not in line]
    assert {r.split("|")[1].strip() for r in rows} == {"op", "layer", "generate", "moshi"}
    assert sum(" PASS " in r for r in rows) == 8 and not any(" FAIL " in r for r in rows)
    assert "| moshi | LMGen step in a CUDA graph | - | - | SKIP | no CUDA device" in out
    assert "| tiny MLP (64 x 160) | 256 | 32 |" in out  # the op against the plain projection
    assert "| 1 |" in out and "| 2 |" in out  # prefill and decode, batch 1 and 2
    assert out.rstrip().endswith("0 accuracy check(s) failed")
