"""Prompt formats and stop strings, exactly as the authors' released code uses them.

The pilot sees its own chat template; the base model, a plain role-tagged transcript that a
pretrained (not instruction-tuned) model can continue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

ROLES = ("system", "user", "assistant")
BASE_ROLE_TAGS = {"system": "[System]", "user": "[User]", "assistant": "[Assistant]"}

#: Extra strings that end a pilot draft, beside the pilot's own EOS token.
DRAFT_STOP_STRINGS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")


def _base_tag_stops() -> tuple[str, ...]:
    tags = [BASE_ROLE_TAGS[role] for role in ("user", "system", "assistant")]
    return tuple(prefix + tag for tag in tags for prefix in ("", "\n", "\n\n"))


#: Extra strings that end the base model's continuation, beside the base model's EOS token.
BASE_STOP_STRINGS = _base_tag_stops()


def validate_messages(messages: Sequence[Message]) -> None:
    """A conversation must end with a non-empty user turn; roles must be known."""
    if not messages:
        raise ValueError("a prompt needs at least one message")
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r}; accepted: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message content must be a string, got {type(content).__name__}")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be the user's, got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise ValueError("the prompt is empty")


def pilot_prompt(tokenizer, messages: Sequence[Message]) -> str:
    """The pilot's chat template with a generation prompt, BOS added if the template lacks it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the pilot tokenizer {tokenizer.name_or_path!r} has no chat template; "
            "a pilot must be a chat (instruction-tuned) model"
        )
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos):
        text = bos + text
    return text


def base_prompt(messages: Sequence[Message], bos_token: str | None) -> str:
    """BOS, each turn as "\\n\\n[Role]\\n" + stripped content, then "\\n\\n[Assistant]\\n"."""
    turns = "".join(
        f"\n\n{BASE_ROLE_TAGS[m['role']]}\n{m['content'].strip()}" for m in messages
    )
    return (bos_token or "") + turns + f"\n\n{BASE_ROLE_TAGS['assistant']}\n"


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest occurrence of any stop string; say whether one was found."""
    positions = [text.find(s) for s in stop_strings if s]
    positions = [p for p in positions if p >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


def stop_strings(kind: str, tokenizer, extra: Sequence[str] = (), fixed_length: bool = False) -> list[str]:
    """The one place a model's stop list is assembled: its format's strings (`pilot`: the chat
    models' end-of-turn markers; `base`: the role tags; `urial`: URIAL's block markers), any
    `extra` ones (lm-eval's `until`, a benchmark's delimiter) and its EOS text. None at all
    in fixed-length benchmark runs, where every row runs its budget."""
    if fixed_length:
        return []
    stops, eos = [*STOP_STRINGS[kind], *extra], tokenizer.eos_token
    return stops + ([eos] if eos and eos not in stops else [])


def stop_reason(model_reason: str, cut: bool) -> str:
    """Why an answer ended: the model's own reason ("eos", "length", ...), unless the final
    text was cut at a stop string; an EOS ends it before any later cut could."""
    return "stop_string" if cut and model_reason != "eos" else model_reason


#: The default URIAL prefix (instruction + restyled examples), written for this project.
URIAL_DEFAULT = Path(__file__).parents[1] / "data" / "urial.txt"

#: Strings that end a URIAL answer: the model starting a new block, as URIAL's own code
#: stops (a fence alone may open a code block inside the answer; the closing fence is
#: stripped afterwards).
URIAL_STOP_STRINGS = ("# Query:", "# Answer:")

STOP_STRINGS = {"pilot": DRAFT_STOP_STRINGS, "base": BASE_STOP_STRINGS, "urial": URIAL_STOP_STRINGS}


def load_urial_prefix(path: str | Path | None) -> str:
    """A URIAL prefix in URIAL's own format (`# Instruction`, then `# Query:` / `# Answer:`
    blocks fenced with ```); the default is ours."""
    path = Path(path).expanduser() if path else URIAL_DEFAULT
    if not path.is_file():
        raise FileNotFoundError(f"URIAL prompt file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if "# Query:" not in text or "# Answer:" not in text:
        raise ValueError(f"URIAL prompt file {str(path)!r} has no '# Query:' / '# Answer:' examples")
    return text.rstrip() + "\n\n"


def urial_prompt(prefix: str, messages: Sequence[Message], bos_token: str | None) -> str:
    """BOS, the prefix, the conversation as URIAL blocks (a system turn joins the
    instruction), then an open `# Answer:` fence for the base model to fill."""
    blocks = []
    for m in messages:
        content = m["content"].strip()
        if m["role"] == "system":
            blocks.append(f"# Instruction\n\n{content}\n\n")
        else:
            tag = "# Query:" if m["role"] == "user" else "# Answer:"
            blocks.append(f"{tag}\n```\n{content}\n```\n\n")
    return (bos_token or "") + prefix + "".join(blocks) + "# Answer:\n```\n"


@dataclass(frozen=True)
class BaseFormat:
    """How the base model is prompted: rendering, which stop strings end its answers, and
    the clean-up of a finished answer."""

    render: Callable[[list[Message]], str]
    stop_kind: str
    finish: Callable[[str], str] = lambda text: text


def base_format(tokenizer, prompt: str, prompt_file: str | None = None) -> BaseFormat:
    """`base`: zero-shot, in the plain role-tagged format WSD hands over in. `urial`: with
    URIAL's in-context alignment prefix (ours by default)."""
    bos = tokenizer.bos_token
    if prompt == "base":
        return BaseFormat(lambda messages: base_prompt(messages, bos), "base")
    if prompt == "urial":
        prefix = load_urial_prefix(prompt_file)
        return BaseFormat(lambda messages: urial_prompt(prefix, messages, bos), "urial",
                          lambda text: text.rstrip().removesuffix("```").rstrip())
    raise ValueError(f"unknown base prompt {prompt!r}; accepted: base, urial")
