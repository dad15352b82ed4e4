import pytest

from wsd.core.prompts import (
    BASE_STOP_STRINGS,
    DRAFT_STOP_STRINGS,
    base_prompt,
    cut_at_stop,
    pilot_prompt,
    stop_strings,
    validate_messages,
)


def test_base_prompt_single_turn_is_exact():
    messages = [{"role": "user", "content": "  What is WSD?\n"}]
    assert base_prompt(messages, "<bos>") == "<bos>\n\n[User]\nWhat is WSD?\n\n[Assistant]\n"


def test_base_prompt_multi_turn_is_exact():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": " Blue. "},
        {"role": "user", "content": "Another?"},
    ]
    assert base_prompt(messages, "<|begin_of_text|>") == (
        "<|begin_of_text|>\n\n[System]\nBe brief.\n\n[User]\nName a colour."
        "\n\n[Assistant]\nBlue.\n\n[User]\nAnother?\n\n[Assistant]\n"
    )


def test_base_prompt_without_bos_token():
    assert base_prompt([{"role": "user", "content": "Hi"}], None) == "\n\n[User]\nHi\n\n[Assistant]\n"


def test_stop_lists_are_the_papers(tiny_pair):
    """The paper's lists, written out, and each model's EOS text after them."""
    pilot, base = tiny_pair
    assert stop_strings("pilot", pilot.tokenizer) == ["<end_of_turn>", "<|eot_id|>", "<|im_end|>"]
    assert sorted(stop_strings("base", base.tokenizer)) == sorted([
        "[User]", "\n[User]", "\n\n[User]", "[System]", "\n[System]", "\n\n[System]",
        "[Assistant]", "\n[Assistant]", "\n\n[Assistant]", "<eos>"])
    assert stop_strings("urial", base.tokenizer, ("Question:",)) == ["# Query:", "# Answer:", "Question:", "<eos>"]
    assert stop_strings("base", base.tokenizer, ("Question:",), fixed_length=True) == []


def test_cut_at_earliest_stop_string():
    text = "Paris is the capital.\n\n[User]\nAnd Italy?\n\n[Assistant]\nRome."
    assert cut_at_stop(text, BASE_STOP_STRINGS) == ("Paris is the capital.", True)
    assert cut_at_stop("no stop here", BASE_STOP_STRINGS) == ("no stop here", False)
    assert cut_at_stop("a<|im_end|>b<end_of_turn>", DRAFT_STOP_STRINGS) == ("a", True)


def test_pilot_prompt_uses_chat_template_and_adds_bos(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["pilot"])
    messages = [{"role": "user", "content": "Hi there"}]
    assert pilot_prompt(tok, messages) == "<s><|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_pilot_without_chat_template_is_rejected(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["base"])
    with pytest.raises(ValueError, match="has no chat template"):
        pilot_prompt(tok, [{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "at least one message"),
        ([{"role": "user", "content": "   "}], "the prompt is empty"),
        ([{"role": "robot", "content": "x"}], "unknown message role 'robot'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "must be the user's"),
    ],
)
def test_bad_messages_are_rejected(messages, message):
    with pytest.raises(ValueError, match=message):
        validate_messages(messages)
