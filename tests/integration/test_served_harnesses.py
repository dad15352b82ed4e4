"""The harnesses of the field against the served WSD on the embedded pair (HF): lm-eval's
`local-chat-completions` model over an IFEval slice, and alpaca_eval's own OpenAI decoder (the
one `alpaca_eval evaluate_from_model` writes a model's outputs with). Each gets the answers
WSD gives through the Python API for the same messages and budget."""

import pytest

import wsd
from wsd.core.config import benchmark_config
from wsd.data.prompt_sets import load_benchmark
from wsd.serving.in_thread import InThread
from wsd.serving.openai_api import create_app

pytestmark = pytest.mark.integration

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def generator():
    return wsd.WeakToStrong(draft_max_tokens=16)


@pytest.fixture(scope="module")
def served(generator):
    generator.engines()
    with InThread(create_app(generator, "wsd", api_key=None, max_batch=64, batch_wait_s=0.005)) as server:
        yield server


def test_lm_eval_local_chat_completions_scores_ifeval_through_the_server(served, generator, tmp_path):
    from lm_eval import simple_evaluate

    from eval.judges import install_punkt_tab
    from eval.tax import task_manager
    from wsd.core.schemas import TaxBlock

    install_punkt_tab(str(tmp_path / "nltk_data"))
    results = simple_evaluate(
        model="local-chat-completions",
        model_args=f"model=wsd,base_url={served.url}/chat/completions,num_concurrent=4,max_retries=1",
        tasks=["wsd_ifeval"], task_manager=task_manager(vars(TaxBlock(tasks=["wsd_ifeval"]))), limit=3,
        apply_chat_template=True, log_samples=True, gen_kwargs={"max_gen_toks": MAX_TOKENS})
    samples = results["samples"]["wsd_ifeval"]
    assert len(samples) == 3 and "prompt_level_strict_acc,none" in results["results"]["wsd_ifeval"]
    answers = generator.generate([s["doc"]["prompt"] for s in samples], max_new_tokens=MAX_TOKENS)
    assert [s["resps"][0][0] for s in samples] == [a.response for a in answers]


def test_alpaca_eval_writes_the_outputs_of_the_served_model(served, generator, tmp_path):
    from alpaca_eval.decoders.openai import openai_completions

    clients = tmp_path / "openai_configs.yaml"
    clients.write_text(f"default:\n  - api_key: unused\n    base_url: {served.url}\n")
    instructions = [p.instruction for p in load_benchmark({**benchmark_config("alpaca_eval"), "limit": 2})]
    template = "<|im_start|>user\n{instruction}\n<|im_end|>"  # alpaca_eval's chat models' prompt template
    out = openai_completions([template.format(instruction=i) for i in instructions], model_name="wsd",
                             max_tokens=MAX_TOKENS, temperature=0, requires_chatml=True, num_procs=2,
                             client_config_path=str(clients), price_per_token=0)
    answers = generator.generate([i.strip() for i in instructions], max_new_tokens=MAX_TOKENS)
    assert out["completions"] == [a.response or " " for a in answers]
