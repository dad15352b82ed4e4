"""Weak-to-Strong Decoding: a small aligned pilot writes the beginning of an answer, a large
base model the rest, switched where the base becomes confident in the pilot's text.

    import wsd
    w = wsd.WeakToStrong(pilot="smollm2_135m_instruct", base="gemma3_270m", window=6, threshold=0.8)
    answers = w.generate(["How do I brew green tea?"], max_new_tokens=512)
    answers[0].response, answers[0].keep_count

`wsd.method("nudging", ...)` gives every baseline through the same door (`wsd.api`). The
packages, layered from the bottom: `core` (prompt formats, the stages' config blocks, the
method registry's interface, files), `data` (prompt sets), `backends` (models on transformers
or vLLM), `weak_to_strong` (WSD: its switch rule and settings, its engines) and `baselines`
(each method with its own config block, all registered in `methods`), `runs` (result
identities, tracking), `api`; `experiments` (GenerAlign, training, the reproduce plan) sits
above the judges (`eval`).
The names below load on first use, so importing a submodule stays light.
"""

__all__ = ["Answer", "Generator", "WeakToStrong", "method"]


def __getattr__(name: str):
    if name in __all__:
        from wsd import api

        return getattr(api, name)
    raise AttributeError(f"module 'wsd' has no attribute {name!r}")
