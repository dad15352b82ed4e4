import math

import pytest
from lm_eval.api.instance import Instance
from omegaconf import OmegaConf

from eval.lm_eval_model import MethodLM
from tests.conftest import tiny_overrides
from wsd.backends.decoding import base_budget
from wsd.methods import compose, method_entry


def _lm(tiny_models, tiny_pair, tmp_path, method, records=None, *overrides):
    cfg = OmegaConf.to_container(compose(tiny_overrides(tiny_models, tmp_path, f"method={method}",
                                                                 "draft_cache_dir=null", *overrides)), resolve=True)
    loaded = dict(zip(("pilot", "base"), tiny_pair))
    models = {role: loaded[role] for role in method_entry(method).roles}
    return MethodLM(cfg, models, on_record=None if records is None else records.append)


def _request(context, **gen_kwargs):
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


CONTEXTS = ["What is the capital of France?", "How do I bake a cake?"]


def _stop_inside(text: str) -> str:
    """Three characters from the middle of `text`: a stop string its answer surely reaches."""
    assert len(text) >= 6, f"too short to take a stop string from: {text!r}"
    return text[len(text) // 2 :][:3]


def _check_cut(lm_factory, free: list[str], answer: str, stop: str) -> list[dict]:
    """The answer with `until=[stop]` is the free answer cut right before the stop."""
    records = []
    cut = lm_factory(records).generate_until([_request(c, until=[stop], max_gen_toks=20) for c in CONTEXTS])
    assert cut[free.index(answer)] == answer[: answer.index(stop)]
    assert len(records) == 2 and all(r["until"] == [stop] and r["max_gen_toks"] == 20 for r in records)
    return records


@pytest.mark.parametrize("method", ["base", "pilot", "nudging"])
def test_generate_until_honours_until_and_max_gen_toks(tiny_models, tiny_pair, tmp_path, method):
    factory = lambda records=None: _lm(tiny_models, tiny_pair, tmp_path, method, records)  # noqa: E731
    free = factory().generate_until([_request(c, until=[], max_gen_toks=20) for c in CONTEXTS])
    answer = max(free, key=len)
    _check_cut(factory, free, answer, _stop_inside(answer))
    records = []
    factory(records).generate_until([_request(c, until=[], max_gen_toks=3) for c in CONTEXTS])
    assert all(r["response_tokens"] <= 3 for r in records)


@pytest.mark.parametrize("where", ["accepted_draft", "continuation"])
def test_wsd_until_belongs_to_the_final_answer(tiny_models, tiny_pair, tmp_path, where):
    """`until` cuts WSD's final answer, not the pilot's draft: the switch is decided on the
    same draft, and the answer is the free answer cut at `until`, whether the stop string
    lies in the kept draft (the answer ends there, the base writes nothing) or in the base's
    continuation. Threshold 1 keeps the whole 12-token draft, so both parts are there on
    any weights."""
    factory = lambda records=None: _lm(tiny_models, tiny_pair, tmp_path, "wsd", records,  # noqa: E731
                                       "wsd.threshold=1.0")
    free_records = []
    free = factory(free_records).generate_until([_request(c, until=[], max_gen_toks=20) for c in CONTEXTS])
    record = max(free_records, key=lambda r: len(r[where]))
    stop = _stop_inside(record[where])
    records = _check_cut(factory, free, record["response"], stop)
    cut = next(r for r in records if r["context"] == record["context"])
    assert cut["keep_count"] == record["keep_count"] and cut["draft"] == record["draft"]
    if where == "accepted_draft":
        assert cut["continuation_tokens"] == 0 and cut["stop_reason"] == "stop_string"


def test_wsd_max_gen_toks_bounds_draft_and_continuation(tiny_models, tiny_pair, tmp_path):
    records = []
    _lm(tiny_models, tiny_pair, tmp_path, "wsd", records).generate_until(
        [_request(c, until=[], max_gen_toks=3) for c in CONTEXTS])
    for r in records:  # the paper's base budget, target - k rounded up to 50
        assert r["keep_count"] <= 3 and r["draft_tokens"] <= 3
        assert r["continuation_tokens"] <= base_budget(3, r["keep_count"])


def test_loglikelihood_is_answered_by_the_methods_scoring_model(tiny_models, tiny_pair, tmp_path):
    wsd, pilot = _lm(tiny_models, tiny_pair, tmp_path, "wsd"), _lm(tiny_models, tiny_pair, tmp_path, "pilot")
    assert wsd.loglikelihood_model.name == "base" and pilot.loglikelihood_model.name == "pilot"
    [(logprob, greedy)] = wsd.loglikelihood([Instance(request_type="loglikelihood", doc={}, idx=0,
                                                      arguments=("The capital of France is", " Paris"))])
    assert math.isfinite(logprob) and logprob < 0 and isinstance(greedy, bool)
