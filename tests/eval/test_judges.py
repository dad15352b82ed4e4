import json

import pytest
import torch

from eval.judges import (
    HarmlessnessJudge,
    ReferenceSimilarityJudge,
    RewardModelJudge,
    build_judge,
    is_refusal,
    reference_for,
)

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot provide instructions for making weapons.",
    "As an AI, I must decline to assist with this.",
    "Sorry, but that is not something I can help with.",
    "I won\u2019t do that: it would be illegal and could hurt people.",
    "I am unable to assist with hacking into accounts.",
]
COMPLIANCES = [
    "Sure! Here is a simple bread recipe: mix flour, water, salt and yeast.",
    "The capital of France is Paris.",
    "To bake bread, first knead the dough for ten minutes.",
    "Step 1: open the terminal. Step 2: run the installer. I cannot stress enough how easy it is." + " x" * 200,
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", COMPLIANCES)
def test_compliances_are_not_refusals(text):
    assert not is_refusal(text)


def test_harmlessness_scores_refusal_and_offensive_language():
    items = [{"response": "I'm sorry, I can't help with that."},
             {"response": "You are a stupid idiot and I hate you."},
             {"response": ""}]
    scores = HarmlessnessJudge().score(items)
    assert [s["refusal"] for s in scores] == [1.0, 0.0, 0.0]
    assert [s["offensive"] for s in scores] == [0.0, 1.0, 0.0]
    assert [s["empty"] for s in scores] == [0.0, 0.0, 1.0]


def test_reference_similarity_ranks_a_paraphrase_above_an_unrelated_answer():
    judge = ReferenceSimilarityJudge()
    items = [{"response": "Paris is the capital city of France.", "reference": "The capital of France is Paris."},
             {"response": "Bananas are rich in potassium.", "reference": "The capital of France is Paris."},
             {"response": "No reference here.", "reference": None}]
    close, far, none = judge.score(items)
    assert close["similarity"] > 0.8 > 0.3 > far["similarity"]
    assert none is None


def test_reference_for_each_benchmark_shape():
    assert reference_for({"reference": "A"}, 1) == "A"
    assert reference_for({"reference": ["t1", "t2"]}, 2) == "t2"
    assert reference_for({"reference": None, "chosen": "C"}, 1) == "C"
    assert reference_for({"best_answer": "B"}, 1) == "B"
    assert reference_for({"category": "writing", "reference": None}, 1) is None


def test_reward_model_scores_match_a_direct_forward_and_win_against_the_reference(tiny_reward_model):
    judge = RewardModelJudge(model=tiny_reward_model, batch_size=2)
    messages = [{"role": "user", "content": "Name a colour."}]
    items = [{"messages": messages, "response": "Blue.", "reference": "Red."},
             {"messages": messages, "response": "Red.", "reference": "Red."},
             {"messages": messages, "response": "Green.", "reference": None}]
    scores = judge.score(items)
    text = judge._reward.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "Blue."}], tokenize=False)
    with torch.inference_mode():
        inputs = judge._reward.tokenizer([text], return_tensors="pt", add_special_tokens=False)  # BOS is in the template
        direct = judge._reward.model(**inputs).logits[0, 0].item()
    assert scores[0]["reward"] == pytest.approx(direct, abs=1e-4)
    assert scores[0]["win"] == (1.0 if scores[0]["reward"] > scores[0]["reference_reward"] else 0.0)
    assert scores[1]["win"] == 0.5  # the same text as its reference: a tie
    assert "win" not in scores[2]


def test_judge_models_go_to_the_configured_device(tiny_reward_model, monkeypatch):
    """`device: auto` is the GPU where there is one; the reward model and its inputs follow
    the config (a device that does not exist is an error, not a silent CPU run)."""
    from wsd.backends.models import resolve_device

    assert resolve_device("auto") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device(None) == "cuda"
    monkeypatch.undo()
    assert RewardModelJudge(model=tiny_reward_model, device="cpu")._reward.model.device.type == "cpu"
    with pytest.raises((RuntimeError, ValueError), match="(?i)device"):
        RewardModelJudge(model=tiny_reward_model, device="nosuchdevice")


def test_unknown_judge_and_a_judge_model_that_does_not_load(tmp_path):
    accepted = ("alpaca_eval, arena_hard, harmlessness, ifeval, local_llm_judge, mt_bench_grading, "
                "reference_similarity, reward_model")
    with pytest.raises(ValueError, match=f"unknown judge .gpt5.; accepted: {accepted}"):
        build_judge({"name": "gpt5"})
    with pytest.raises(ValueError, match="judge model '.*nothing-here' does not load"):
        build_judge({"name": "reward_model", "model": str(tmp_path / "nothing-here")})


@pytest.fixture(scope="module")
def pairwise(tiny_models, tmp_path_factory):
    from eval.judges import PairwiseLLMJudge

    return PairwiseLLMJudge(model={"name": "tiny-judge", "path": tiny_models["pilot"]},
                            model_cache_dir=str(tmp_path_factory.mktemp("cache")), batch_size=3)


def test_pairwise_judge_both_orders_correct_a_position_biased_judge(pairwise, monkeypatch):
    """A judge that leans to answer A (P(A) 0.95 when A is the good answer, still 0.6 when A
    is the bad one) would call the bad answer the winner when shown first; averaged over
    both orders, the good answer wins and the bad one loses."""
    good, bad = "Paris is the capital of France.", "I like turtles."
    monkeypatch.setattr(pairwise, "prefer_a", lambda pairs: [0.95 if a == good else 0.6 for _, a, _ in pairs])
    question = "What is the capital of France?"
    ours_good, ours_bad = pairwise.score([{"prompt": question, "response": good, "reference": bad},
                                          {"prompt": question, "response": bad, "reference": good}])
    assert (ours_good["win_as_a"], ours_good["win_as_b"]) == pytest.approx((0.95, 0.4))
    assert (ours_bad["win_as_a"], ours_bad["win_as_b"]) == pytest.approx((0.6, 0.05))
    assert ours_good["win"] == pytest.approx(0.675) and ours_bad["win"] == pytest.approx(0.325)
    assert ours_good["consistent"] == ours_bad["consistent"] == 0.0  # the verdict flipped with the order


def test_pairwise_judge_on_a_real_model_is_symmetric(pairwise):
    x, y = "Paris is the capital of France.", "I like turtles."
    items = [{"prompt": "What is the capital of France?", "response": x, "reference": y},
             {"prompt": "What is the capital of France?", "response": y, "reference": x},
             {"prompt": "What is the capital of France?", "response": x, "reference": x},
             {"prompt": "Hi", "response": x, "reference": None}]
    forward, swapped, same, none = pairwise.score(items)
    assert forward["win"] + swapped["win"] == pytest.approx(1.0, abs=1e-5)
    assert same["win"] == pytest.approx(0.5, abs=1e-6)
    assert none is None


def test_pairwise_prompt_shows_both_answers_in_order(pairwise):
    text = pairwise._prompt("Q?", "first answer", "second answer")
    assert text.index("[Answer A]\nfirst answer") < text.index("[Answer B]\nsecond answer")
    assert text.startswith(pairwise._judge.tokenizer.bos_token or "")


@pytest.fixture(scope="module")
def ifeval_judge(tmp_path_factory):
    from eval.judges import IFEvalJudge

    return IFEvalJudge(nltk_data_dir=str(tmp_path_factory.mktemp("nltk_data")))


def ifeval_item(response, ids, kwargs):
    return {"prompt": "Follow the instructions.", "response": response,
            "meta": {"key": 1, "instruction_id_list": ids, "kwargs": kwargs}}


def test_ifeval_checks_pass_and_fail_known_instructions(ifeval_judge):
    passing = ifeval_item("leaves fall softly now. autumn wind carries them far. silence fills the field.",
                          ["punctuation:no_comma", "change_case:english_lowercase",
                           "length_constraints:number_sentences"],
                          [{}, {}, {"relation": "at least", "num_sentences": 3}])
    failing = ifeval_item("Hello, World. This is Fine.", ["punctuation:no_comma", "change_case:english_lowercase"],
                          [{}, {}])
    partly = ifeval_item("no commas here and all lowercase", ["punctuation:no_comma",
                                                               "detectable_format:number_bullet_lists"],
                         [{}, {"num_bullets": 2}])
    good, bad, half = ifeval_judge.score([passing, failing, partly])
    assert (good["prompt_strict"], good["followed_strict"], good["instructions"]) == (1.0, 3.0, 3.0)
    assert (bad["prompt_strict"], bad["followed_strict"]) == (0.0, 0.0)
    assert (half["prompt_strict"], half["followed_strict"], half["instructions"]) == (0.0, 1.0, 2.0)
    assert ifeval_judge.score([{"prompt": "x", "response": "y", "meta": {}}]) == [None]


def test_punkt_tab_is_installed_offline_from_the_registry_package(ifeval_judge):
    import nltk

    sentences = nltk.sent_tokenize("Dr. Smith arrived at 5 p.m. on Monday. It rained. We left.")
    assert sentences == ["Dr. Smith arrived at 5 p.m. on Monday.", "It rained.", "We left."]


def _alpaca_items(n):
    return [{"prompt": f"Question {i}?", "response": "An answer." * (i + 1), "reference": "Another answer.",
             "meta": {"index": i}} for i in range(n)]


def test_alpaca_eval_metrics_on_a_fixture_annotation_set(tiny_models, tmp_path):
    from eval.judges import AlpacaEvalJudge

    judge = AlpacaEvalJudge(local_judge={"model": {"name": "tiny-judge", "path": tiny_models["pilot"]},
                                         "model_cache_dir": str(tmp_path)})
    assert judge.proxy
    out = judge.set_metrics([{"preference": 1.0}, {"preference": 2.0}, {"preference": 2.0},
                             {"preference": 1.5}, None], _alpaca_items(5))
    metrics = out["alpaca_eval"]
    assert metrics["win_rate"] == pytest.approx(62.5)  # mean(preference - 1) in percent
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"], metrics["n_total"]) == (2, 1, 1, 4)
    # the length-controlled win rate needs alpaca_eval's data from the Hub: offline it says so
    assert out["notes"]["length_controlled_winrate"].startswith("unavailable")
    items = [{"prompt": "Q?", "response": "An answer.", "reference": "Another answer."},
             {"prompt": "Q?", "response": "An answer.", "reference": None}]
    scored, unscored = judge.score(items)
    assert 1.0 <= scored["preference"] <= 2.0 and unscored is None


def _prefers_winner(body: dict) -> str:
    """alpaca_eval's prompt shows the outputs as "m" and "M" (in a random order it undoes)."""
    second = body["messages"][-1]["content"].split('"model_identifier": "M"')[1]
    return "M" if "WINNER" in second else "m"


def test_alpaca_eval_own_annotator_through_an_openai_compatible_endpoint(stand_in, tmp_path, monkeypatch):
    from eval.judges import AlpacaEvalJudge

    url, server = stand_in(_prefers_winner, models=["my-judge"])
    monkeypatch.chdir(tmp_path)  # a folder relative to the working directory, as `output_root=outputs` gives
    judge = AlpacaEvalJudge(endpoint=url, client={"model": "my-judge"}, folder="outputs/evaluate/run")
    assert judge.proxy and judge.annotators_config == "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2's
    items = [{**item, "response": f"WINNER {i}"} for i, item in enumerate(_alpaca_items(3))]
    with judge.session():
        scores = judge.score(items)
    assert [s["preference"] for s in scores] == pytest.approx([1.75] * 3)
    chats = server.chats()
    assert len(chats) == 3 and all(path == "/v1/chat/completions" for path, _ in server.seen[1:])
    # alpaca_eval's own prompt and sampling, asking the endpoint's model instead of gpt-4-1106-preview
    assert all(b["model"] == "my-judge" and b["max_tokens"] == 1 and b["top_logprobs"] == 5 for b in chats)
    assert all("## Best Model Identifier" in b["messages"][-1]["content"] for b in chats)
    asked = " ".join(json.dumps(b["messages"]) for b in chats)  # sent in parallel, in any order
    assert all(f"Question {i}?" in asked for i in range(3))
    metrics = judge.set_metrics(scores, items)["alpaca_eval"]
    assert metrics["win_rate"] == pytest.approx(75.0) and metrics["n_total"] == 3
    # a second session reads alpaca_eval's annotation cache in the folder: nothing asked again
    with judge.session():
        assert [s["preference"] for s in judge.score(items)] == pytest.approx([1.75] * 3)
    assert len(server.chats()) == 3
    assert not AlpacaEvalJudge(annotators_config="weighted_alpaca_eval_gpt4_turbo").proxy


def test_an_unknown_alpaca_eval_annotator_is_named():
    from eval.judges import AlpacaEvalJudge

    judge = AlpacaEvalJudge(annotators_config="no_such_annotator")
    with pytest.raises(ValueError, match="judge model 'no_such_annotator' does not load"), judge.session():
        pass


def test_pairwise_judge_sees_earlier_turns():
    from eval.judges import _conversation

    single = {"prompt": "Q1", "messages": [{"role": "user", "content": "Q1"}]}
    multi = {"prompt": "Rewrite it.", "messages": [{"role": "user", "content": "Write a poem."},
                                                   {"role": "assistant", "content": "Roses."},
                                                   {"role": "user", "content": "Rewrite it."}]}
    assert _conversation(single) == "Q1"
    assert _conversation(multi) == "User: Write a poem.\n\nAssistant: Roses.\n\nUser: Rewrite it."


def test_every_judge_is_a_judge_whose_hooks_do_nothing_unless_it_needs_them():
    """The evaluate stage calls every hook of every judge: a judge with only `score` works."""
    from eval.base import Judge
    from eval.judges import JUDGES

    assert all(issubclass(cls, Judge) and cls.name == name for name, cls in JUDGES.items())

    class Counting(Judge):
        name = "counting"

        def score(self, items):
            return [{"length": len(item["response"])} for item in items]

    judge = Counting()
    items = [{"response": "abc"}]
    assert Counting.check_config({"name": "counting"}, None) is None and judge.check_items(items) is None
    with judge.session() as session:
        assert session is judge and judge.score(items) == [{"length": 3}]
    assert judge.set_metrics([{"length": 3}], items) == {} and judge.estimates([{"length": 3}], items) == {}
    assert (judge.requires, judge.ratios, judge.proxy) == (None, None, True)
