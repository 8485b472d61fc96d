"""The run folder, for both model families: one live run at a time (a real lock that dies with its
process), only our own checkpoints touched, a finished run left alone, changed settings refused,
a kill at any moment (the very first checkpoint too) resumable, nothing created before the run is
checked."""

import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

import inplace_ttt.train.run_dir as run_dir
import inplace_ttt.train.trainer as trainer
from inplace_ttt.cli import main
from inplace_ttt.train.run_dir import COMPLETE, IN_PROGRESS, LOCK, PARTIAL_FINAL, checkpoint_step, mark_checkpoint_started, rotate_checkpoints
from tests.train.conftest import REPO, edit, losses

pytestmark = pytest.mark.integration  # the whole module: slow runs (see pyproject.toml's markers)

FAMILIES = ["transformers", "moshi"]


@pytest.fixture(params=FAMILIES)
def family_run(request, tmp_path, workspace):
    """A run config of each family (4 steps, checkpoints every 2) and its run folder."""
    if request.param == "transformers":
        config, run = workspace["config"], workspace["run"]
    else:
        pytest.importorskip("moshi")
        from tests.train.conftest import moshi_run

        config, run = moshi_run(tmp_path / "moshi", train={"report_to": []}), tmp_path / "moshi" / "run"
    edit(config, train={"max_steps": 4, "save_steps": 2, "logging_steps": 1})
    return config, run


def folder_state(path):
    """Every file under `path` with its bytes: equal states mean nothing was written or deleted."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else None


IN_FLIGHT = re.compile(r"\..+\.[a-z0-9_]{8}")  # files.atomic_path's temporary: `.<name>.` and mkstemp's 8 random characters


def settled_files(path):
    """The files under `path` a live run has finished writing: its atomic-write temporaries are
    renamed away at any moment, so they are left out (listing one before its rename, and not
    after, made the live-run test fail)."""
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not IN_FLIGHT.fullmatch(p.name)}


def last_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    return err[-1]


class Killed(BaseException):
    """The process dying at this point: nothing after it runs but `finally` blocks (the lock's
    release among them, which a real kill does too: `test_a_live_run_locks_...` kills for real)."""


@contextmanager
def killed_writing(monkeypatch, marker: str):
    """Run the block as a run killed when it writes a file whose path holds `marker` (a
    checkpoint's COMPLETE mark: after the checkpoint's files, before the mark)."""
    real = run_dir.write_atomic

    def write(path, text):
        if marker in str(path):
            raise Killed
        real(path, text)

    monkeypatch.setattr(run_dir, "write_atomic", write)
    with pytest.raises(Killed):
        yield
    monkeypatch.setattr(run_dir, "write_atomic", real)
    sys.stderr.write("\n")  # the next run's messages start on a line of their own, as the next process's would (not after a cut-off progress bar)


SLOW_TRAIN = (
    "import time, inplace_ttt.train.trainer as t; step = t.TTTTrainer.training_step\n"
    "def slow(self, *a, **k):\n"
    "    time.sleep(1)\n"
    "    return step(self, *a, **k)\n"
    "t.TTTTrainer.training_step = slow\n"
    "import sys; from inplace_ttt.cli import main; sys.exit(main(sys.argv[1:]))"
)


def start_slow_run(config, run):
    """`ittt train` in another process, a second a step; returns once it holds the run folder and has
    written its config.yaml there (the lock comes first: a test reading the folder in between raced)."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", str(config)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((run / LOCK).is_file() and (run / LOCK).read_text().strip() and (run / "config.yaml").is_file()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return proc


def test_a_live_run_locks_its_folder_and_a_killed_ones_lock_blocks_nothing(family_run, capsys):
    config, run = family_run
    first = start_slow_run(config, run)
    try:
        before, config_yaml = settled_files(run), (run / "config.yaml").read_bytes()
        for extra in ([], ["--resume"]):  # a second fresh run, and --resume, while the first still runs
            assert main(["train", str(config), *extra]) == 2
            message = last_error(capsys)
            assert message.startswith("ittt train: error: train.output_dir") and f"is in use by a live run (pid {first.pid} on " in message, message
        assert settled_files(run) >= before and (run / "config.yaml").read_bytes() == config_yaml  # the first run's own, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / LOCK).is_file()  # the killed run's lock file stays: it blocks nothing
    assert main(["train", str(config), "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4]  # one curve: each step logged once
    assert (run / "final").is_dir()


def test_resume_touches_only_the_checkpoints_this_library_wrote(family_run, capsys, monkeypatch):
    config, run = family_run
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    assert (run / "checkpoint-4" / IN_PROGRESS).is_file() and not (run / "checkpoint-4" / COMPLETE).exists()
    manual, best = run / "checkpoint-best-manual", run / "checkpoint-best"  # a user's: one without COMPLETE, one with
    manual.mkdir()
    (manual / "notes.txt").write_text("mine")
    best.mkdir()
    (best / COMPLETE).write_text("{}")
    unmarked = run / "checkpoint-7"  # a user's folder with one of our names, but not our marks
    unmarked.mkdir()
    (unmarked / "weights.bin").write_bytes(b"x")
    before = folder_state(run)
    assert main(["train", str(config), "--resume"]) == 2
    message = last_error(capsys)
    assert "holds ['checkpoint-7'], not written by this library (no IN_PROGRESS or COMPLETE file): move them out" in message, message
    assert folder_state(run) == before  # refused: nothing written or deleted
    (unmarked / "weights.bin").rename(run.parent / "weights.bin")  # an empty one is nothing to lose
    assert main(["train", str(config), "--resume"]) == 0
    assert (manual / "notes.txt").read_text() == "mine" and (best / COMPLETE).is_file()  # the user's folders, as they were
    assert not unmarked.exists()  # empty, checkpoint-<digits>: removed
    assert (run / "checkpoint-4" / COMPLETE).is_file() and not (run / "checkpoint-4" / IN_PROGRESS).exists()  # written again, complete


def test_a_finished_run_resumed_does_nothing_and_says_so(family_run, capsys):
    config, run = family_run
    assert main(["train", str(config), "--train.max_steps", "1"]) == 0
    capsys.readouterr()
    before = folder_state(run)
    assert main(["train", str(config), "--resume", "--train.max_steps", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert (
        out == f"ittt train: {run} is a finished run ({run / 'final'} is written): nothing to resume. To train it further, start a new run from its final model"
    )
    assert folder_state(run) == before  # final/ untouched, no step trained


def test_resume_with_changed_settings_is_refused_and_the_old_config_kept(family_run, capsys, monkeypatch):
    config, run = family_run
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    saved = (run / "config.yaml").read_text()
    before = folder_state(run)
    changed = ["--train.learning_rate", "0.002", "--ttt.chunk_size", "2", "--train.logging_steps", "2"]  # logging is bookkeeping
    assert main(["train", str(config), "--resume", *changed]) == 2
    message = last_error(capsys)
    assert message.startswith(f"ittt train: error: --resume: the settings differ from the run's {run / 'config.yaml'}: ")
    chunk = yaml.safe_load(saved)["ttt"]["chunk_size"]
    assert f"train.learning_rate: 0.001 -> 0.002; ttt.chunk_size: {chunk} -> 2. Resume with the run's settings, or pass --allow-changes" in message
    assert "logging_steps" not in message
    assert folder_state(run) == before
    data = ["--data.train", f"[{run.parent / 'elsewhere'}]"]  # another data set
    assert main(["train", str(config), "--resume", *data]) == 2 and "data.train: [" in last_error(capsys)
    assert main(["train", str(config), "--resume", "--allow-changes", "--train.learning_rate", "0.002"]) == 0
    assert (run / "config-until-step-2.yaml").read_text() == saved  # the settings of steps 1-2, kept
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 0.002


def change_first_training_file(config):
    """Edit the first file under the run's data.train in place, keeping it valid data: a text
    document's words reversed, a conversation's codes shifted by one step."""
    first = min(p for root in yaml.safe_load(config.read_text())["data"]["train"] for p in Path(root).rglob("*") if p.is_file())
    if first.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        codes = load_file(str(first))["codes"]
        save_file({"codes": codes.roll(1, dims=-1).contiguous()}, str(first))
    else:
        first.write_text(" ".join(reversed(first.read_text().split())))


def test_resume_over_changed_data_files_is_refused(family_run, capsys, monkeypatch):
    """The same config over files that changed under the same paths: the rows' fingerprint
    (data.sha256) differs, so --resume is refused with nothing written; --allow-changes goes on."""
    config, run = family_run
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    assert (run / "data.sha256").is_file()
    change_first_training_file(config)
    before = folder_state(run)
    assert main(["train", str(config), "--resume"]) == 2
    message = last_error(capsys)
    assert message.startswith("ittt train: error: --resume: the training data differs from the run's: the files under data.train changed")
    assert "pass --allow-changes" in message and folder_state(run) == before
    assert main(["train", str(config), "--resume", "--allow-changes"]) == 0
    assert (run / "data.sha256").read_text() != before["data.sha256"].decode()  # the rows it went on with


def test_allow_changes_needs_resume(workspace, capsys):
    assert main(["train", str(workspace["config"]), "--allow-changes"]) == 2
    assert last_error(capsys) == "ittt train: error: --allow-changes goes with --resume"


def test_a_kill_inside_the_very_first_checkpoint_resumes_from_scratch_exactly(family_run, capsys, monkeypatch):
    config, run = family_run
    edit(config, train={"max_steps": 2})
    reference = run.parent / "reference"
    assert main(["train", str(config), "--train.output_dir", str(reference)]) == 0
    with killed_writing(monkeypatch, "checkpoint-2"):
        main(["train", str(config)])
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-2"] and not (run / "checkpoint-2" / COMPLETE).exists()
    assert main(["train", str(config)]) == 2
    assert "already holds a run: pass --resume to continue it" in last_error(capsys)
    assert main(["train", str(config), "--resume"]) == 0
    assert losses(run) == losses(reference)  # from step 0, exactly the uninterrupted run
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2]


def test_a_kill_while_writing_the_final_model_leaves_no_final_folder(workspace, monkeypatch):
    config, run = edit(workspace["config"], train={"max_steps": 2}), workspace["run"]

    def killed_before_the_rename(out, save):
        mark_checkpoint_started(out / PARTIAL_FINAL)
        save(out / PARTIAL_FINAL)
        raise Killed

    monkeypatch.setattr(trainer, "write_final", killed_before_the_rename)
    with pytest.raises(Killed):
        main(["train", str(config)])
    monkeypatch.undo()
    assert not (run / "final").exists() and (run / PARTIAL_FINAL / "config.json").is_file()  # written, never renamed
    assert main(["train", str(config), "--resume"]) == 0  # not a finished run: it writes its final model
    assert (run / "final" / "config.json").is_file() and not (run / PARTIAL_FINAL).exists()


def _a_file(run):
    run.write_text("x")
    return run


def _a_parent_file(run):
    (run.parent / "parent").write_text("x")
    return run.parent / "parent" / "run"


def _other_files(run):
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    return run


@pytest.mark.parametrize(
    "setup, message",
    [
        (_a_file, r"train.output_dir .*/run is a file, not a folder: choose a folder for the run"),
        (_a_parent_file, r"train.output_dir .*/parent/run: .*/parent is a file, so the folder cannot be created"),
        (_other_files, r"train.output_dir .*/run is not empty and holds no run: choose a new or empty folder"),
        (lambda run: "/proc/ittt-run", r"train.output_dir /proc/ittt-run: cannot create the run folder \(.+\)"),
    ],
    ids=["output path is a file", "a parent is a file", "a folder of other files", "a folder that cannot be created"],
)
def test_an_output_folder_it_cannot_use_is_named_and_left_alone(workspace, capsys, setup, message):
    import re

    edit(workspace["config"], train={"output_dir": str(setup(workspace["run"]))})
    before = folder_state(workspace["root"])
    assert main(["train", str(workspace["config"])]) == 2
    assert re.fullmatch("ittt train: error: " + message, last_error(capsys))
    assert folder_state(workspace["root"]) == before


def test_a_run_refused_after_the_config_was_read_leaves_no_folder(workspace, capsys):
    edit(workspace["config"], ttt={"clip_tau": 1e-5})  # the first-batch doctor fails: after the model loaded and the Trainer was built
    assert main(["train", str(workspace["config"])]) == 2
    assert "doctor found problems on the first batch" in capsys.readouterr().err
    assert not workspace["run"].exists()
    edit(workspace["config"], ttt={"clip_tau": None}, train={"output_dir": str(workspace["root"] / "a" / "b" / "run")})
    edit(workspace["config"], data={"row_length": 12})
    assert main(["train", str(workspace["config"])]) == 2
    assert not (workspace["root"] / "a").exists()  # no parent left behind either


def test_rotation_deletes_only_complete_checkpoints_of_ours(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-3-mine").mkdir()  # transformers' own rotation matches this one (".*checkpoint-([0-9]+)")
    (tmp_path / "checkpoint-1").mkdir()  # ours by name, not complete
    (tmp_path / "checkpoint-1" / IN_PROGRESS).touch()
    rotate_checkpoints(tmp_path, 2, keep=str(tmp_path / "checkpoint-2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3-mine", "checkpoint-8"]
    assert [checkpoint_step(tmp_path / n) for n in ("checkpoint-12", "checkpoint-best", "checkpoint-3-mine", "checkpoint-")] == [12, None, None, None]


class Planted:
    """A harmless class: a checkpoint's state file holding it must be refused, never unpickled."""


def test_a_state_file_that_is_not_tensors_is_named_before_resuming(tmp_path):
    import random

    import numpy as np
    import torch

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, checkpoint / "optimizer.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}, checkpoint / "rng_state.pth")
    run_dir.check_state_files(checkpoint)  # what transformers' Trainer writes loads
    torch.save({"state": {}, "planted": Planted()}, checkpoint / "optimizer.pt")
    with pytest.raises(run_dir.RunError, match=r"^--resume: .*optimizer.pt cannot be loaded safely \(WeightsUnpickler error: Unsupported global: .*Planted\)"):
        run_dir.check_state_files(checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(
        run_dir.RunError, match=r"^--resume: .*optimizer.pt cannot be loaded safely .*remove .*checkpoint-2 to resume from the checkpoint before it$"
    ):
        run_dir.check_state_files(checkpoint)


def test_resume_from_a_checkpoint_with_a_planted_optimizer_state_is_refused_by_name(family_run, capsys, monkeypatch):
    import torch

    config, run = family_run
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    torch.save({"state": {}, "planted": Planted()}, run / "checkpoint-2" / "optimizer.pt")
    before = folder_state(run)
    assert main(["train", str(config), "--resume"]) == 2
    message = last_error(capsys)
    assert message.startswith("ittt train: error: --resume: ") and "checkpoint-2/optimizer.pt cannot be loaded safely (WeightsUnpickler error" in message
    assert folder_state(run) == before


def metric_rows(run):
    """The logged rows of each step (loss, learning rate, gradient norms, TTT telemetry): equal for runs that trained alike."""
    return [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def final_weights(run):
    from safetensors.torch import load_file

    return {f.name: load_file(f) for f in sorted((run / "final").glob("*.safetensors"))}


def test_a_kill_after_the_last_checkpoint_writes_the_final_model_without_training_further(family_run, monkeypatch):
    """Killed after its checkpoint at max_steps, before final/: --resume writes final/ from that checkpoint
    (transformers' resume would train a step past max_steps), equal to the uninterrupted run's."""
    config, run = family_run
    reference = run.parent / "reference"
    assert main(["train", str(config), "--train.output_dir", str(reference)]) == 0

    def killed(out, save):
        raise Killed

    monkeypatch.setattr(trainer, "write_final", killed)
    with pytest.raises(Killed):
        main(["train", str(config)])
    monkeypatch.undo()
    assert (run / "checkpoint-4" / COMPLETE).is_file() and not (run / "final").exists()
    assert main(["train", str(config), "--resume"]) == 0
    assert [row["step"] for row in metric_rows(run)] == [1, 2, 3, 4]
    assert metric_rows(run) == metric_rows(reference)
    weights, expected = final_weights(run), final_weights(reference)
    assert weights.keys() == expected.keys() and weights
    for name in expected:
        assert all(weights[name][k].equal(v) for k, v in expected[name].items()), name


def test_a_checkpoint_missing_a_state_file_or_a_run_without_its_config_is_refused_by_name(family_run, capsys, monkeypatch):
    """Resuming would not be exact: a checkpoint without its optimizer state (transformers would go on
    with a fresh optimizer) is refused naming the file; without config.yaml the settings cannot be
    checked, so only --allow-changes goes on (and writes a new one)."""
    config, run = family_run
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    assert "optimizer.pt" in json.loads((run / "checkpoint-2" / COMPLETE).read_text())["files"]
    optimizer = run / "checkpoint-2" / "optimizer.pt"
    optimizer.rename(run.parent / "optimizer.pt")
    before = folder_state(run)
    assert main(["train", str(config), "--resume"]) == 2
    assert last_error(capsys) == (
        f"ittt train: error: --resume: {run / 'checkpoint-2'} lacks optimizer.pt, so it cannot be resumed exactly (a fresh optimizer or "
        f"schedule would go on silently). Put the files back, or remove {run / 'checkpoint-2'} to resume from the checkpoint before it"
    )
    assert folder_state(run) == before
    (run.parent / "optimizer.pt").rename(optimizer)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    before = folder_state(run)
    assert main(["train", str(config), "--resume", "--ttt.chunk_size", "2"]) == 2
    message = last_error(capsys)
    assert message.startswith(f"ittt train: error: --resume: {run / 'config.yaml'} is missing, so these settings cannot be checked against the ones ")
    assert "pass --allow-changes to go on with these settings" in message
    assert folder_state(run) == before
    assert main(["train", str(config), "--resume", "--allow-changes"]) == 0
    assert (run / "config.yaml").read_text() == saved and (run / "final").is_dir()


def test_a_torn_last_metrics_line_is_dropped_and_the_resumed_metrics_equal_the_uninterrupted_runs(family_run, monkeypatch):
    config, run = family_run
    reference = run.parent / "reference"
    assert main(["train", str(config), "--train.output_dir", str(reference)]) == 0
    with killed_writing(monkeypatch, "checkpoint-4"):
        main(["train", str(config)])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 1.2')  # a kill in the middle of an append
    with pytest.warns(UserWarning, match=r"metrics.jsonl: its last line is cut short \(the run was killed while logging it\): dropped"):
        assert main(["train", str(config), "--resume"]) == 0
    assert [row["step"] for row in metric_rows(run)] == [1, 2, 3, 4]
    assert metric_rows(run) == metric_rows(reference)
