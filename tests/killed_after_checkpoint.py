"""Run a training stage that SIGKILLs itself right after it saved checkpoint-N: a crash at a known step.

`python -m tests.killed_after_checkpoint N pipelines.train_pilot key=value ...`. The kill comes from
inside the trainer (a callback every Trainer gets), so where the run stops does not depend on how
fast the machine is or on how often a watcher polls.
"""
import os
import runpy
import signal
import sys

from transformers import TrainerCallback, trainer


class KillAfterSave(TrainerCallback):
    step = 0

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:  # the checkpoint, trainer_state.json included, is on disk
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    KillAfterSave.step, stage = int(sys.argv[1]), sys.argv[2]
    trainer.DEFAULT_CALLBACKS.append(KillAfterSave)
    sys.argv = [stage, *sys.argv[3:]]
    runpy.run_module(stage, run_name="__main__", alter_sys=True)
