"""Run a stage that SIGKILLs itself at a known point: a crash that does not depend on timing.

    python -m tests.crash checkpoint N pipelines.train_pilot key=value ...   # right after checkpoint-N is saved
    python -m tests.crash records N pipelines.generate key=value ...         # right after the N-th record is flushed

The kill comes from inside the run, so where it stops does not depend on how fast the machine
is or on how often a watcher polls.
"""
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_checkpoint(step: int) -> None:
    from transformers import TrainerCallback, trainer

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:  # the checkpoint, trainer_state.json included, is on disk
                die()

    trainer.DEFAULT_CALLBACKS.append(KillAfterSave)  # every Trainer the stage builds gets it


def after_records(count: int) -> None:
    from wsd.core.store import RecordFile

    append, written = RecordFile.append, []

    def append_then_maybe_die(self, record):
        append(self, record)
        written.append(record)
        if len(written) == count:
            die()

    RecordFile.append = append_then_maybe_die


def run_until_killed(point: str, n: int, module: str, args: list[str]) -> None:
    """Run `python -m module args` in its own process, killed at `point` N, and check it was."""
    killed = subprocess.run([sys.executable, "-m", "tests.crash", point, str(n), module, *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=600)
    assert killed.returncode == -signal.SIGKILL


if __name__ == "__main__":
    point, n, stage = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {"checkpoint": after_checkpoint, "records": after_records}[point](n)
    sys.argv = [stage, *sys.argv[4:]]
    runpy.run_module(stage, run_name="__main__", alter_sys=True)
