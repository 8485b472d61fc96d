"""`ittt moshi-eval`'s report: one table a metric, a model a row, its loss by minute with the interval."""

from inplace_ttt.eval.moshi.report import write_moshi_report


def model(weights, ttt, loss, interval, **options):
    buckets = {"loss": loss, "count": [10, 4], "interval": interval}
    return {
        "weights": weights,
        "ttt": ttt,
        "clip_tau": options.get("clip_tau"),
        "yarn": options.get("yarn"),
        "ttt_layers": [0, 2] if ttt else [],
        "context_steps": 750,
        "buckets": {m: buckets for m in ("text", "text_words", "audio", "audio_semantic")},
        "conversations": {"a.safetensors": {}, "b.safetensors": {}},
    }


def test_a_row_per_model_with_its_options_and_intervals(tmp_path):
    results = {
        "settings": {"bucket_minutes": 0.5, "steps_per_forward": 250},
        "device": "cpu",
        "dtype": "float32",
        "models": {
            "base": model("m.safetensors", None, [2.0, None], [[1.9, 2.1], None]),
            "ttt": model("m.safetensors", "t.safetensors", [1.5, 1.25], [None, [1.0, 1.5]], clip_tau=0.01, yarn=4.0),
        },
    }
    report = write_moshi_report(results, tmp_path).read_text()
    assert "Models: `base` (m.safetensors, no TTT), `ttt` (m.safetensors, TTT layers [0, 2], clip_tau 0.01, YaRN x4)." in report
    assert "2 conversations; time buckets of 0.5 min; pieces of 250 steps; attention context 750 steps (1.00 min)" in report
    assert report.count("| model | 0-0.5 | 0.5-1 |") == 4
    assert "| base | 2.000 [1.900, 2.100] | - |" in report and "| ttt | 1.500 | 1.250 [1.000, 1.500] |" in report
    assert "Values per bucket: [10, 4]" in report
    assert (tmp_path / "moshi_loss_by_minute.png").stat().st_size > 0
    assert "- base" not in report and not (tmp_path / "moshi_difference_by_minute.png").exists()  # no baseline named: no pairs


def test_each_model_against_the_baseline_a_signed_row_and_a_plot(tmp_path):
    difference = {"difference": [-0.25, None], "interval": [[-0.375, -0.125], None]}
    trained = model("m.safetensors", "t.safetensors", [1.5, 1.25], [None, [1.0, 1.5]])
    trained["paired"] = {m: difference for m in ("text", "text_words", "audio", "audio_semantic")}
    results = {
        "settings": {"bucket_minutes": 0.5, "steps_per_forward": 250},
        "device": "cpu",
        "dtype": "float32",
        "baseline": "base",
        "models": {"base": model("m.safetensors", None, [2.0, None], [[1.9, 2.1], None]), "ttt": trained},
    }
    report = write_moshi_report(results, tmp_path).read_text()
    assert report.count("| ttt - base | -0.250 [-0.375, -0.125] | - |") == 4  # after the models' rows of each metric's table
    assert "the paired difference from the baseline `base`" in report
    assert "![moshi_difference_by_minute](moshi_difference_by_minute.png)" in report
    assert (tmp_path / "moshi_difference_by_minute.png").stat().st_size > 0
