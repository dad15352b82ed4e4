"""Every method, registered: WSD and the paper's baselines behind one small interface
(`wsd.core.registration`). A new method is its module (its builder, check and `METHOD`), its
typed block (`wsd/core/schemas.py`), its `conf/method/<name>.yaml`, and one line here."""

from __future__ import annotations

from wsd.baselines import aligner, args, best_of_n, cards, nudging, prompted
from wsd.core.registration import METHODS, MethodEntry, effective_backend, method_entry, register
from wsd.weak_to_strong import method as weak_to_strong

register(weak_to_strong.METHOD, *prompted.METHODS, nudging.METHOD, args.METHOD, cards.METHOD, best_of_n.METHOD,
         aligner.METHOD)

__all__ = ["METHODS", "MethodEntry", "effective_backend", "method_entry"]
