"""One thin Hydra entry point per stage (`python -m pipelines.<stage> <overrides>`)."""

import sys

import wsd.methods  # noqa: F401  (registers every config schema the stage configs start from, methods' too)

_MULTIRUN = ("-m", "--multirun")


def multirun_flag_first() -> None:
    """Hydra's parser takes `-m` only before the overrides (`x=1 -m y=2,3` is rejected as
    unrecognized arguments); stage scripts accept it anywhere by moving it to the front."""
    args = sys.argv[1:]
    sys.argv[1:] = [a for a in args if a in _MULTIRUN] + [a for a in args if a not in _MULTIRUN]
