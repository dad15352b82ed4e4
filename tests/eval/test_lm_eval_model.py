import math

import pytest
from lm_eval.api.instance import Instance
from omegaconf import OmegaConf

from eval.lm_eval_model import MethodLM
from pipelines import generate
from tests.conftest import tiny_overrides
from wsd.decoding import base_budget
from wsd.methods import method_entry


def _lm(tiny_models, tiny_pair, tmp_path, method, records=None):
    cfg = OmegaConf.to_container(generate.compose(tiny_overrides(tiny_models, tmp_path, f"method={method}",
                                                                 "draft_cache_dir=null")), resolve=True)
    loaded = dict(zip(("pilot", "base"), tiny_pair))
    models = {role: loaded[role] for role in method_entry(method).roles}
    return MethodLM(cfg, models, on_record=None if records is None else records.append)


def _request(context, **gen_kwargs):
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


@pytest.mark.parametrize("method", ["wsd", "base", "pilot", "nudging"])
def test_generate_until_honours_until_and_max_gen_toks(tiny_models, tiny_pair, tmp_path, method):
    lm = _lm(tiny_models, tiny_pair, tmp_path, method)
    contexts = ["What is the capital of France?", "How do I bake a cake?"]
    free = lm.generate_until([_request(c, until=[], max_gen_toks=20) for c in contexts])
    assert all(isinstance(a, str) for a in free)
    # a stop string taken from inside the free answer cuts the answer right before it
    answer = max(free, key=len)
    assert len(answer) > 4, free
    stop = answer[len(answer) // 2 :][:3]
    records = []
    lm = _lm(tiny_models, tiny_pair, tmp_path, method, records)
    cut = lm.generate_until([_request(c, until=[stop], max_gen_toks=20) for c in contexts])
    assert cut[free.index(answer)] == answer[: answer.index(stop)]
    assert len(records) == 2 and all(r["until"] == [stop] and r["max_gen_toks"] == 20 for r in records)
    lm.generate_until([_request(c, until=[], max_gen_toks=3) for c in contexts])
    for r in records[2:]:  # WSD: the paper's base budget, target - k rounded up to 50
        limit = r["keep_count"] + base_budget(3, r["keep_count"]) if method == "wsd" else 3
        assert r["response_tokens"] <= limit and r.get("keep_count", 0) <= 3


def test_loglikelihood_is_answered_by_the_methods_scoring_model(tiny_models, tiny_pair, tmp_path):
    wsd, pilot = _lm(tiny_models, tiny_pair, tmp_path, "wsd"), _lm(tiny_models, tiny_pair, tmp_path, "pilot")
    assert wsd.loglikelihood_model.name == "base" and pilot.loglikelihood_model.name == "pilot"
    [(logprob, greedy)] = wsd.loglikelihood([Instance(request_type="loglikelihood", doc={}, idx=0,
                                                      arguments=("The capital of France is", " Paris"))])
    assert math.isfinite(logprob) and logprob < 0 and isinstance(greedy, bool)
