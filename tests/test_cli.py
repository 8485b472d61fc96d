from inplace_ttt.cli import main


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--steps", "3", "--length", "128", "--chunk-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "warm start  max |TTT - original| = 0.00e+00" in out
    assert "streaming" in out
