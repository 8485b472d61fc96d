"""The run folder (`train.output_dir`) of `ittt train` and `ittt pretrain`: one live run at a
time, resumable at any moment, and nothing in it touched that this library did not write.

What a run folder holds, all written by the run:

- ``.ittt-run.lock``: the lock a live run holds (`fcntl.flock`, which the operating system
  drops when the process ends, however it ends): a second run into the same folder, fresh or
  ``--resume``, is refused while the first lives, and a killed run's stale file blocks nothing.
  The file stays and marks the folder as a run's.
- ``config.yaml``: the run's settings. ``--resume`` with other settings is refused, the changed
  keys named; with ``--allow-changes`` it goes on and keeps the old file as
  ``config-until-step-<N>.yaml``.
- ``data.sha256``: a fingerprint of the rows the run trains on (`data_fingerprint`): ``--resume``
  after the files under the same paths changed is refused too (``--allow-changes`` goes on).
- ``metrics.jsonl``; ``checkpoint-<step>/``: an ``IN_PROGRESS`` file is its first write and a
  ``COMPLETE`` file its last, so a checkpoint counts only once complete, and only folders with
  one of the two are ours (a user's ``checkpoint-best-manual/`` or an unmarked ``checkpoint-7/``
  is never deleted);
- ``final/``: written as ``.final-partial/`` and renamed when complete, so a ``final/`` means a
  finished run (resuming one does nothing and says so).

The checkpoint's state files (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ...) are
pickles that transformers' `Trainer` loads on resume with ``torch.load(weights_only=True)``;
`check_state_files` loads each the same way before anything changes, so a file that holds other
objects, or is cut short, is named instead of failing deep inside the resumed training. The
``COMPLETE`` mark lists the checkpoint's files (`mark_checkpoint_complete`): one without any of
them (``optimizer.pt`` deleted, say, which transformers would replace by a fresh optimizer
without a word) is refused by name rather than resumed inexactly (`check_checkpoint_files`).
Without ``config.yaml`` the settings cannot be checked, so ``--resume`` is refused unless
``--allow-changes`` says to go on with the ones given. A checkpoint at ``max_steps`` (a run
killed before ``final/`` was written) ends the run without training (`end_at_checkpoint`).

Everything is checked before the folder is created or changed (`resume_point`, read only), and
again under the lock (`start_run_dir`), since another run may have started meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from ..files import write_atomic
from .config import comparable, comparable_saved, dump_config

LOCK = ".ittt-run.lock"
IN_PROGRESS = "IN_PROGRESS"
COMPLETE = "COMPLETE"
FINAL = "final"
PARTIAL_FINAL = ".final-partial"
CONFIG = "config.yaml"
DATA = "data.sha256"
TRAINER_STATE = "trainer_state.json"
# what every checkpoint of transformers' Trainer holds: required of one whose COMPLETE mark predates its list of files
TRAINER_FILES = (TRAINER_STATE, "optimizer.pt", "scheduler.pt")
STATE_PATTERNS = ("*.pt", "*.pth")  # a checkpoint's pickled state files, which transformers' Trainer torch.loads on resume
# keys that may differ on --resume: where and how often the run reports and saves, not what it trains
BOOKKEEPING = {
    "train.output_dir",
    "train.report_to",
    "train.logging_steps",
    "train.logging_nan_inf_filter",
    "train.save_steps",
    "train.save_total_limit",
    "train.dataloader_num_workers",
    "train.doctor",
    "train.eval_steps",
    "train.per_device_eval_batch_size",
    "train.eval_strategy",
    "train.disable_tqdm",
    "train.logging_dir",
    "train.logging_strategy",
    "train.save_strategy",
}

_held: dict[str, int] = {}  # folder (resolved) -> file descriptor of the lock this process holds on it


class RunError(ValueError):
    """A run cannot start or go on; the message says why."""


class RunFinished(Exception):
    """`--resume` of a finished run: there is nothing to do (the message says so)."""


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name; None for any other name."""
    name = Path(path).name
    digits = name.removeprefix("checkpoint-")
    return int(digits) if digits != name and digits.isdigit() and digits.isascii() else None


def _checkpoints(out: Path) -> list[Path]:
    return [p for p in out.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]


def is_ours(checkpoint: Path) -> bool:
    """Whether a checkpoint folder was written by this library (it carries one of our markers)."""
    return (checkpoint / IN_PROGRESS).is_file() or (checkpoint / COMPLETE).is_file()


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` of a run that was completely written."""
    done = [p for p in _checkpoints(Path(output_dir)) if (p / COMPLETE).is_file()]
    return max(done, key=checkpoint_step, default=None)


def holds_run(out: Path, new_lock: bool = False) -> bool:
    """Whether a folder holds a run of this library (live, killed or finished); `new_lock`: its
    lock file is the one this process just created, no sign of an earlier run."""
    return ((out / LOCK).is_file() and not new_lock) or (out / FINAL).is_dir() or any(is_ours(p) for p in _checkpoints(out))


def is_main_process() -> bool:
    """The process that owns the run folder: the only one under torchrun that checks and changes it."""
    return int(os.environ.get("RANK", "0")) == 0


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the training rows as the run reads them (dtypes, shapes and values, in order):
    equal configs over files that changed under the same paths give another fingerprint."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype} {list(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# checks (read only) ----------------------------------------------------------------------------


def resume_point(config, resume: bool, allow_changes: bool = False, new_lock: bool = False, data: str | None = None) -> Path | None:
    """The checkpoint to resume from (None: start from step 0), after checking that the run may
    use `config.train.output_dir`. Reads only: nothing is written or deleted. Raises `RunError`
    when it may not, `RunFinished` when resuming a finished run. (`new_lock`: see `holds_run`;
    `data`: the fingerprint of the rows this run would train on, once they are loaded.)"""
    out = Path(config.train.output_dir)
    if not is_main_process():  # the main process checked and prepares the folder
        return last_complete_checkpoint(out) if resume else None
    _check_writable(out)
    holder = _live_holder(out)
    if holder is not None:
        raise RunError(f"train.output_dir {out} is in use by a live run ({holder}): wait for it to end, or choose another train.output_dir")
    if out.is_dir():
        foreign = sorted(p.name for p in _checkpoints(out) if not is_ours(p) and any(p.iterdir()))
        if foreign:
            raise RunError(
                f"train.output_dir {out} holds {foreign}, not written by this library (no {IN_PROGRESS} or {COMPLETE} "
                "file): move them out of the run folder, which must hold only the run's own checkpoint-<step> folders"
            )
    if not resume:
        if out.is_dir() and holds_run(out, new_lock):
            raise RunError(f"train.output_dir {out} already holds a run: pass --resume to continue it, or choose another train.output_dir")
        if out.is_dir() and any(p.name != LOCK or not new_lock for p in out.iterdir()):
            raise RunError(f"train.output_dir {out} is not empty and holds no run: choose a new or empty folder")
        return None
    if not (out.is_dir() and holds_run(out, new_lock)):
        raise RunError(f"--resume: train.output_dir {out} holds no run to resume; leave out --resume to start one")
    if (out / FINAL).is_dir():
        raise RunFinished(f"{out} is a finished run ({out / FINAL} is written): nothing to resume. To train it further, start a new run from its final model")
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is not None:
        check_checkpoint_files(checkpoint)
        check_state_files(checkpoint)
        if not (out / CONFIG).is_file() and not allow_changes:
            raise RunError(
                f"--resume: {out / CONFIG} is missing, so these settings cannot be checked against the ones {checkpoint.name} "
                "was trained with. Put it back, or pass --allow-changes to go on with these settings (written as a new config.yaml)"
            )
    changes = config_changes(config, out / CONFIG)
    if changes and not allow_changes:
        raise RunError(
            f"--resume: the settings differ from the run's {out / CONFIG}: {'; '.join(changes)}. Resume with the run's "
            f"settings, or pass --allow-changes to go on with these (the old file is kept as config-until-step-<N>.yaml)"
        )
    saved = (out / DATA).read_text().strip() if (out / DATA).is_file() else None
    if data is not None and saved is not None and saved != data and not allow_changes:
        raise RunError(
            f"--resume: the training data differs from the run's: the files under data.train changed since it started "
            f"(rows fingerprint {data[:12]}, the run's {saved[:12]} in {out / DATA}). Resume with the run's data, or pass "
            "--allow-changes to go on with these rows"
        )
    return checkpoint


def check_checkpoint_files(checkpoint: Path) -> None:
    """Refuse, by name, a complete checkpoint that lacks a file its COMPLETE mark lists (or, for a
    mark without the list, one of `TRAINER_FILES`): resuming from it would not be exact."""
    try:
        listed = json.loads((checkpoint / COMPLETE).read_text()).get("files", TRAINER_FILES)
    except (json.JSONDecodeError, AttributeError) as e:
        raise RunError(
            f"--resume: {checkpoint / COMPLETE} is not the JSON object this library writes ({e}): remove {checkpoint} to resume from the checkpoint before it"
        ) from None
    missing = [name for name in listed if not (checkpoint / name).is_file()]
    if missing:
        raise RunError(
            f"--resume: {checkpoint} lacks {', '.join(missing)}, so it cannot be resumed exactly (a fresh optimizer or schedule "
            f"would go on silently). Put the files back, or remove {checkpoint} to resume from the checkpoint before it"
        )


def check_state_files(checkpoint: Path) -> None:
    """Load each pickled state file of `checkpoint` as transformers' `Trainer` does on resume
    (``torch.load(weights_only=True)``: tensors and plain containers only, so nothing in it runs;
    memory-mapped, so nothing large is read), raising one `RunError` naming a file that fails."""
    from transformers.trainer_pt_utils import safe_globals

    for file in sorted(f for pattern in STATE_PATTERNS for f in checkpoint.glob(pattern)):
        allowed = safe_globals() if file.name.startswith("rng_state") else nullcontext()  # transformers allows numpy's RNG state there only
        try:
            with allowed:
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            reason = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0]).split(" was not an allowed")[0]
            raise RunError(
                f"--resume: {file} cannot be loaded safely ({reason}): it holds objects other than tensors and plain "
                f"values, or is cut short. It is never unpickled in full; remove {checkpoint} to resume from the checkpoint before it"
            ) from None


def config_changes(config, saved: Path) -> list[str]:
    """``key: old -> new`` for each setting of `config` that differs from the `saved` config.yaml
    (bookkeeping keys aside); nothing when the run was killed before writing one."""
    if not saved.is_file():
        return []
    try:
        before = _flat(comparable_saved(type(config), yaml.safe_load(saved.read_text()) or {}, config.train))
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise RunError(f"--resume: cannot read the run's {saved}: {e}") from None
    after = _flat(comparable(config))
    keys = sorted((set(before) | set(after)) - BOOKKEEPING)
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys if before.get(k) != after.get(k)]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"train.output_dir {out} is a file, not a folder: choose a folder for the run")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"train.output_dir {out}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"train.output_dir {out}: {existing} is not writable")


def _live_holder(out: Path) -> str | None:
    """Who holds the run folder's lock (another process, alive), or None."""
    import fcntl

    if str(out.resolve()) in _held or not (out / LOCK).is_file():
        return None
    fd = os.open(out / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared lock, given back at once: the probe writes nothing
    except BlockingIOError:
        return (out / LOCK).read_text().strip() or "another process"
    finally:
        os.close(fd)  # also drops the probe's shared lock
    return None


# changes (under the lock) ----------------------------------------------------------------------


def start_run_dir(config, resume: bool, allow_changes: bool = False, rows: Sequence[torch.Tensor] = ()) -> Path | None:
    """Create the run folder, take its lock for as long as this process runs or until
    `release_run_dir`, check it again (another run may have started meanwhile), and make it
    ready: when resuming, delete what a kill cut off (our unfinished checkpoints and final
    model, metrics logged after the checkpoint), keep a changed config.yaml under another name;
    write the run's config.yaml and, given the training `rows`, their fingerprint (hashed here, by the
    main process only). Returns the checkpoint to resume from."""
    out = Path(config.train.output_dir)
    if not is_main_process():
        return resume_point(config, resume)
    data = data_fingerprint(*rows) if rows else None
    resume_point(config, resume, allow_changes, data=data)  # refuses before anything is created
    with named_folder_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        new_lock = not (out / LOCK).exists()
        _lock(out)
    try:
        checkpoint = resume_point(config, resume, allow_changes, new_lock, data)  # the folder as it is now that we hold it
    except RunError:
        release_run_dir(out)
        if new_lock:
            (out / LOCK).unlink()
        raise
    if resume:
        for folder in _checkpoints(out):
            if (folder / IN_PROGRESS).is_file() and not (folder / COMPLETE).is_file():
                shutil.rmtree(folder)
            elif not any(folder.iterdir()):  # a kill between creating it and marking it: nothing to lose
                folder.rmdir()
        if (out / PARTIAL_FINAL / IN_PROGRESS).is_file():
            shutil.rmtree(out / PARTIAL_FINAL)
        from .telemetry import truncate_metrics

        step = checkpoint_step(checkpoint) if checkpoint is not None else 0
        truncate_metrics(out / "metrics.jsonl", step)
        if config_changes(config, out / CONFIG):
            (out / CONFIG).rename(out / f"config-until-step-{step}.yaml")
    write_atomic(out / CONFIG, dump_config(config))
    if data is not None:
        write_atomic(out / DATA, data + "\n")
    return checkpoint


@contextmanager
def not_created_yet(out: Path) -> Iterator[None]:
    """Undo the creation of `out` (and of its missing parents) by the code inside, as long as they
    are empty: transformers' `Trainer` creates its output_dir when built, but the run creates its
    folder only once everything is checked (`start_run_dir`)."""
    # only the main process: another one must not remove a folder the main process just created
    missing = [p for p in (out, *out.absolute().parents) if not p.exists()] if is_main_process() else []
    try:
        yield
    finally:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (not ours to remove), or never created
                break


@contextmanager
def named_folder_errors(out: Path) -> Iterator[None]:
    """An `OSError` about the run folder (it cannot be created: a read-only or special file
    system) as one message naming `train.output_dir`; any other error as it is."""
    try:
        yield
    except OSError as e:
        if e.filename is None or not str(e.filename).startswith(str(out)):
            raise
        raise RunError(f"train.output_dir {out}: cannot create the run folder ({e.strerror or e})") from None


def _lock(out: Path) -> None:
    import fcntl

    key = str(out.resolve())
    if key in _held:
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = (out / LOCK).read_text().strip() or "another process"
        raise RunError(f"train.output_dir {out} is in use by a live run ({holder}): wait for it to end, or choose another train.output_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
    _held[key] = fd


def release_run_dir(output_dir: str | Path) -> None:
    """Give the run folder's lock back (the end of the process does too)."""
    fd = _held.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def mark_checkpoint_started(folder: Path) -> None:
    """A checkpoint's first write: its folder, marked as ours and unfinished."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IN_PROGRESS).touch()


def mark_checkpoint_complete(folder: Path, step: int) -> None:
    """A checkpoint's last write, listing its files (`check_checkpoint_files`): from now on it
    counts (and is ours for good)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != IN_PROGRESS)
    write_atomic(folder / COMPLETE, json.dumps({"step": step, "files": files}) + "\n")
    (folder / IN_PROGRESS).unlink(missing_ok=True)


def rotate_checkpoints(out: Path, limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `keep`, the best one); delete older ones
    of ours only (transformers' own rotation would take any folder named ``checkpoint-<digits>...``)."""
    if not limit or limit <= 0:
        return
    done = sorted((p for p in _checkpoints(out) if (p / COMPLETE).is_file()), key=checkpoint_step)
    protected = {done[-1].name} if done else set()
    if keep is not None:
        protected.add(Path(keep).name)
    extra = len(done) - max(limit, len(protected))
    for folder in done:
        if extra <= 0:
            break
        if folder.name not in protected:
            shutil.rmtree(folder)
            extra -= 1


def trained_steps(checkpoint: str | Path) -> int:
    """The optimizer steps a checkpoint holds (the global step in its trainer_state.json)."""
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])


def end_at_checkpoint(trainer, checkpoint: str | Path) -> None:
    """End a run resumed from its checkpoint at ``max_steps`` (killed before ``final/`` was written)
    without training: the Trainer loads the checkpoint's weights, and its callbacks see the
    training begin and end (the trained TTT weights beside a LoRA adapter load, the training
    record is written). transformers' own resume would train a step past ``max_steps`` whenever
    that is no whole number of epochs."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))  # private: transformers' one loader of a checkpoint's weights (whole, sharded, PEFT)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    for event in (trainer.callback_handler.on_train_begin, trainer.callback_handler.on_train_end):
        trainer.control = event(trainer.args, trainer.state, trainer.control)


def write_final(out: Path, save: Callable[[Path], None]) -> Path:
    """Write the final model with `save(folder)` into ``.final-partial/``, then rename it to
    ``final/``: a ``final/`` is always complete, and means the run finished."""
    partial, final = out / PARTIAL_FINAL, out / FINAL
    if partial.exists():
        shutil.rmtree(partial)
    mark_checkpoint_started(partial)
    save(partial)
    (partial / IN_PROGRESS).unlink()
    partial.rename(final)
    return final
