"""`benchmarks/recall.py` at a tiny shape: both models trained and scored, and the fast weight's key
selectivity read at the end and during training, per TTT layer."""

import math

import pytest

from tests.benchmarks.conftest import load_benchmark


@pytest.mark.integration
def test_tiny_run_reports_accuracy_and_key_selectivity():
    bench = load_benchmark("recall")
    argv = "--steps 4 --batch 2 --length 64 --pairs 4 --hidden 64 --window 8 --chunk 16 --eval-samples 4 --probe-every 2 --threads 1 --no-freeze-keys"
    results = bench.main([*argv.split(), "--curve-pairs", "1,4", "--curve-lengths", "64,96"])
    swa, ttt = results["models"]["SWA"], results["models"]["SWA + TTT"]
    assert "selectivity" not in swa
    assert [x["layer"] for x in ttt["selectivity"]] == [0, 1]
    assert sorted(ttt["selectivity_during_training"]) == [0, 2]
    for per_layer in [ttt["selectivity"], *ttt["selectivity_during_training"].values()]:
        assert all(math.isfinite(x["match/other"]) and 0 <= x["share"] <= 1 for x in per_layer)
    for model in (swa, ttt):
        assert sorted(model["by_pairs"]) == [1, 4] and sorted(model["by_gap"]) == [48, 80]
        assert 0 <= model["at_training_length"]["accuracy"] <= 100


@pytest.mark.integration
def test_frozen_keys_stay_what_they_were():
    """`--freeze-keys`: everything the first TTT layer's keys are made of is left alone, so its key
    selectivity is the same number at every probe, while training still changes the rest."""
    bench = load_benchmark("recall")
    argv = "--steps 4 --batch 2 --length 64 --pairs 4 --hidden 64 --window 8 --chunk 16 --eval-samples 4 --probe-every 2 --threads 1 --freeze-keys"
    models = bench.main([*argv.split(), "--curve-pairs", "4", "--curve-lengths", "64"])["models"]
    assert sorted(models) == ["SWA", "SWA + TTT"]  # the plain model gets the same parts frozen
    ttt = models["SWA + TTT"]
    first = [ttt["selectivity_during_training"][step][0] for step in (0, 2)] + [ttt["selectivity"][0]]
    assert first[0] == first[1] == first[2]
    second = [ttt["selectivity_during_training"][step][1]["match/other"] for step in (0, 2)] + [ttt["selectivity"][1]["match/other"]]
    assert len(set(second)) > 1  # layer 1's keys read layer 0's output, which trains
