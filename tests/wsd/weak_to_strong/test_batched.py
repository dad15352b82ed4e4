import pytest

from tests.conftest import assert_same_answers, tolerance
from wsd.backends.decoding import base_texts
from wsd.data.prompt_sets import Prompt
from wsd.weak_to_strong.batched import FastOptions, stable_boundary
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.switch import WSDSettings

TEXTS = [
    "Hi",
    "What is the capital of France?",
    "Give me three tips for baking bread at home, with a short reason for each tip.",
    "Sure! The capital of France is Paris, and the capital of Italy is Rome. Which is older?",
    "1. Preheat the oven. 2. Mix flour, sugar and eggs. 3. Bake for 20 minutes. What went wrong?",
    "Why?",
    "I cannot help with that request, but can you suggest a safer alternative for me?",
    "User: What is two plus two?",
]
PROMPTS = [Prompt(f"p{i}", [{"role": "user", "content": t}]) for i, t in enumerate(TEXTS)]
PROMPTS.append(Prompt("chat", [{"role": "user", "content": "Name a colour."},
                               {"role": "assistant", "content": "Blue."},
                               {"role": "user", "content": "Another one?"}]))


def records(engine, prompts=PROMPTS):
    return {p.id: r for p, r in engine.generate_many(prompts)}


def test_stable_boundary_excludes_the_growing_word_and_its_whitespace():
    assert stable_boundary("Sure!  Here is a li", 0) == len("Sure!  Here is a")
    assert stable_boundary("Sure!  Here is a list:\n\n", 0) == len("Sure!  Here is a list:")
    assert stable_boundary("PROMPT one", 6) == 6
    assert stable_boundary("PROMPT", 6) == 6


@pytest.mark.parametrize("fixed_length", [False, True])
@pytest.mark.parametrize("window, threshold", [(2, 0.05), (3, 0.2), (1, 0.6), (6, 0.8)])
def test_fast_matches_reference_at_every_batch_size(tiny_pair, fixed_length, window, threshold):
    settings = WSDSettings(window=window, threshold=threshold, draft_max_tokens=40, target_max_tokens=60,
                           fixed_length=fixed_length)
    reference = records(ReferenceWSD(*tiny_pair, settings))
    if threshold < 0.5:  # the comparison must cover prompts that switch mid-draft
        assert any(r["switched"] and r["keep_count"] < r["base_draft_tokens"] for r in reference.values())
    paths = {"reused_scoring_cache": 0, "prefilled": 0}
    for batch_size in (1, 3, 8):
        engine = FastWSD(*tiny_pair, settings, FastOptions(batch_size=batch_size, chunk_tokens=7))
        fast = records(engine)
        paths = {key: paths[key] + engine.continuation_batches[key] for key in paths}
        assert_same_answers(fast, reference, tiny_pair[1])
        for pid, ref in reference.items():
            got = fast[pid]
            if tolerance(tiny_pair[1]) < 1e-3:  # fp32: the same text, so the same ending
                assert got["stop_reason"] == ref["stop_reason"]
            k = ref["keep_count"]
            assert got["base_token_probs"][:k] == pytest.approx(ref["base_token_probs"][:k], rel=tolerance(tiny_pair[1]),
                                                               abs=1e-7)
            if not got["early_stopped"]:
                assert got["draft"] == ref["draft"]
    assert paths["reused_scoring_cache"] > 0  # these drafts fit the 256-token sliding window


@pytest.mark.parametrize("force_keep", [1, 5, "draft"])
def test_a_forced_switch_matches_reference_and_stops_drafting_there(tiny_pair, force_keep):
    settings = WSDSettings(window=6, threshold=0.8, draft_max_tokens=30, target_max_tokens=50, force_keep=force_keep)
    reference = records(ReferenceWSD(*tiny_pair, settings))
    fast = records(FastWSD(*tiny_pair, settings, FastOptions(batch_size=4, chunk_tokens=4)))
    assert_same_answers(fast, reference, tiny_pair[1])
    for r in reference.values():
        if force_keep == "draft" or r["base_draft_tokens"] < force_keep:
            assert r["keep_count"] == r["base_draft_tokens"] and not r["switched"]
        else:
            assert r["keep_count"] == force_keep and r["switched"]
    if force_keep == 1:
        assert all(r["early_stopped"] for r in fast.values() if r["switched"])


def test_long_rows_fall_back_to_a_batched_prefill(tiny_pair):
    """Continuations that would carry the scoring cache past the tiny base's 256-token sliding
    window are prefilled."""
    settings = WSDSettings(window=6, threshold=0.99, draft_max_tokens=90, target_max_tokens=110)
    engine = FastWSD(*tiny_pair, settings, FastOptions(batch_size=8))
    got = records(engine)
    assert engine.continuation_batches["prefilled"] > 0
    assert_same_answers(got, records(ReferenceWSD(*tiny_pair, settings)), tiny_pair[1])


def test_early_stopping_drafts_less(tiny_pair):
    settings = WSDSettings(window=2, threshold=0.05, draft_max_tokens=40, target_max_tokens=60)
    early = FastWSD(*tiny_pair, settings, FastOptions(batch_size=4, chunk_tokens=4))
    full = FastWSD(*tiny_pair, settings, FastOptions(batch_size=4, chunk_tokens=4, early_stop=False))
    a, b = records(early), records(full)
    stopped = [pid for pid, r in a.items() if r["early_stopped"]]
    assert stopped, "no prompt switched early at this threshold"
    assert all(a[p]["draft_tokens"] < b[p]["draft_tokens"] for p in stopped)
    assert early.counter["pilot_drafting"] < full.counter["pilot_drafting"]
    assert_same_answers(a, b, tiny_pair[1])


def test_sweep_reuses_drafts_and_scores(tiny_pair, tmp_path):
    identity = {"pilot": "tiny-pilot", "base": "tiny-base", "draft_max_tokens": 30}
    options = FastOptions(batch_size=4, chunk_tokens=8, early_stop=False)
    first = FastWSD(*tiny_pair, WSDSettings(2, 0.05, 30, 50), options, DraftCache(tmp_path, identity))
    records(first)
    assert first.counter["pilot_drafting"] > 0 and first.counter["base_scoring"] > 0
    for window, threshold in [(2, 0.3), (4, 0.1), (6, 0.8), (1, 0.9)]:
        settings = WSDSettings(window, threshold, 30, 50)
        point = FastWSD(*tiny_pair, settings, options, DraftCache(tmp_path, identity))
        got = records(point)
        assert point.counter["pilot_drafting"] == point.counter["base_scoring"] == 0
        assert all(r["draft_cache_hit"] for r in got.values())
        assert_same_answers(got, records(ReferenceWSD(*tiny_pair, settings)), tiny_pair[1])


def test_early_stopped_cache_entry_serves_only_earlier_switches(tiny_pair, tmp_path):
    identity = {"pilot": "tiny-pilot", "base": "tiny-base", "draft_max_tokens": 30}
    cache = DraftCache(tmp_path, identity)
    records(FastWSD(*tiny_pair, WSDSettings(2, 0.05, 30, 50), FastOptions(batch_size=8, chunk_tokens=4), cache))
    entries = [cache.get(p.messages) for p in PROMPTS]
    partial = [e for e in entries if not e.complete]
    assert partial and all(e.usable(WSDSettings(2, 0.05)) for e in partial)
    assert not any(e.usable(WSDSettings(2, 1.0)) for e in partial)  # never switches: needs the full draft
    strict = FastWSD(*tiny_pair, WSDSettings(2, 1.0, 30, 50), FastOptions(batch_size=8, chunk_tokens=4), cache)
    got = records(strict)
    assert not any(got[p.id]["draft_cache_hit"] for p, e in zip(PROMPTS, entries) if not e.complete)
    assert all(cache.get(p.messages).complete for p in PROMPTS)


@pytest.fixture(scope="module")
def small_window_pair(tiny_pair, tmp_path_factory, placement):
    """The tiny pair with the base's attention limited to a 32-token sliding window (same
    weights), so prompts, drafts and continuations cross it."""
    import json
    import shutil

    from wsd.backends.engines import load_engine
    from wsd.backends.models import ModelSpec

    pilot, base = tiny_pair
    folder = tmp_path_factory.mktemp("window32") / "base"
    shutil.copytree(base.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["layer_types"]) == {"sliding_attention"}
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 32}))
    return pilot, load_engine(ModelSpec.from_config({"name": "base-window-32", "path": str(folder), **placement}), {"name": "hf"},
                              tmp_path_factory.mktemp("cache"))


SHORT = [p for p in PROMPTS if p.id in ("p0", "p5")]  # "Hi", "Why?": 17-18 base tokens


@pytest.mark.parametrize("prompts, draft, chunk", [(SHORT, 3, 2), (PROMPTS, 20, 4)])
def test_fast_matches_reference_across_a_small_sliding_window(small_window_pair, prompts, draft, chunk):
    """Rows with different holes, and continuations that carry every row past the window:
    the fast path gives the reference's answers (it re-reads its scoring cache without holes,
    or prefills the continuation, where holes would shrink the window's span)."""
    settings = WSDSettings(window=2, threshold=0.05, draft_max_tokens=draft, target_max_tokens=40)
    reference = records(ReferenceWSD(*small_window_pair, settings), prompts)
    base = small_window_pair[1]
    for prompt in prompts:
        r, prompt_tokens = reference[prompt.id], base_texts(base, prompt.messages)[1]
        assert prompt_tokens + r["keep_count"] + r["continuation_tokens"] > 32, prompt.id
    for batch_size in (2, len(prompts)):
        engine = FastWSD(*small_window_pair, settings, FastOptions(batch_size=batch_size, chunk_tokens=chunk))
        fast = records(engine, prompts)
        assert_same_answers(fast, reference, base)
        assert engine.continuation_batches["prefilled"] > 0
        assert engine.scoring_restarts > 0 or draft == 3  # 59-token prompts fill the window at once
