"""Every method, registered: WSD and the paper's baselines behind one small interface
(`wsd.core.registration`). A new method is its module (its builder, check, typed block and
`METHOD`), its `conf/method/<name>.yaml`, and one line here. Registering a method stores its
block as the schema its config starts from, so stage configs are composed here (`compose`),
where every method is known."""

from __future__ import annotations

from omegaconf import DictConfig

from wsd.baselines import aligner, args, best_of_n, cards, nudging, prompted
from wsd.core.config import CONF
from wsd.core.registration import METHODS, MethodEntry, effective_backend, method_entry, register
from wsd.weak_to_strong import method as weak_to_strong

register(weak_to_strong.METHOD, *prompted.METHODS, nudging.METHOD, args.METHOD, cards.METHOD, best_of_n.METHOD,
         aligner.METHOD)


def compose(overrides: list[str], stage: str = "generate") -> DictConfig:
    """A stage's config as `python -m pipelines.<stage> <overrides>` builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(stage, overrides=overrides)


__all__ = ["METHODS", "MethodEntry", "compose", "effective_backend", "method_entry"]
