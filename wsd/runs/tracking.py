"""Run logging: a JSONL event log in the run folder, always, and a W&B run when enabled.

W&B runs offline by default (`WANDB_MODE=offline`, or `logger.mode`; `wandb sync` uploads
them later), in a group per experiment or sweep, with job type = the stage. `logger=none`
turns W&B off. The run is always finished, also when the stage fails, so one failed job of
a multirun does not poison the next.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("wsd.runs.tracking")

LOGGERS = ("wandb", "none")


class Tracker:
    def __init__(self, events: Path, run=None):
        self.events, self.run = events, run

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else self.run.dir

    def event(self, kind: str, **data) -> None:
        """One line in `events.jsonl`: what happened, when."""
        with self.events.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "event": kind, **data}, default=str) + "\n")

    def log(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def table(self, key: str, rows: list[dict]) -> None:
        """Per-item rows as a `wandb.Table` (columns: the union of the rows' keys)."""
        if self.run is None or not rows:
            return
        import wandb

        columns = list(dict.fromkeys(k for r in rows for k in r))
        self.run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def summary(self, values: dict) -> None:
        self.event("summary", **values)
        if self.run is not None:
            self.run.summary.update(values)


def validate_logger(logger_cfg: dict) -> None:
    if logger_cfg.get("name") not in LOGGERS:
        raise ValueError(f"unknown logger {logger_cfg.get('name')!r}; accepted: {', '.join(LOGGERS)}")


@contextmanager
def tracked(logger_cfg: dict, *, stage: str, group: str, name: str, config: dict, folder: Path,
            enabled: bool = True):
    """A `Tracker` for one stage run; W&B only where `enabled` (rank 0 of a sharded run)."""
    validate_logger(logger_cfg)
    group = logger_cfg.get("group") or group  # a sweep names its own group
    run = None
    if enabled and logger_cfg["name"] == "wandb":
        import wandb

        Path(logger_cfg["dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=logger_cfg["project"], entity=logger_cfg.get("entity"), mode=logger_cfg["mode"],
                         dir=logger_cfg["dir"], group=group, job_type=stage, name=name, config=config,
                         settings=wandb.Settings(console="off", silent=True), reinit="finish_previous")
    tracker = Tracker(folder / "events.jsonl", run)
    tracker.event("start", stage=stage, name=name, wandb=tracker.run_dir)
    try:
        yield tracker
    except BaseException as err:
        tracker.event("failed", error=repr(err))
        if run is not None:
            run.finish(exit_code=1)
        raise
    tracker.event("finished")
    if run is not None:
        run.finish()
        log.info("W&B run (%s): %s", logger_cfg["mode"], run.dir)
