import pytest

from wsd.backends.reward import RewardModel, RewardSettings


@pytest.fixture(scope="module")
def reward(tiny_reward_model):
    return RewardModel(RewardSettings(path=tiny_reward_model, batch_size=2))


CONVERSATIONS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say yes or no."}]]


def test_extensions_from_the_cache_equal_full_forwards_as_answers_grow_leave_and_change(reward):
    """Every call is one forward over the conversations it names, from the cached prefixes:
    answers that grow (one kept, one not), a conversation that leaves, a re-tokenized prefix
    that no longer matches what the cache holds, and a conversation new to the cache. Each
    reward equals the full text's own forward."""
    scorer = reward.extensions(CONVERSATIONS)
    steps = [{0: ["Blue", "Red", "A"], 1: ["Yes", "No"]},
             {0: [" sky", " and", "."], 1: ["!", " way"]},
             {0: [" is", "!", " green"]},  # conversation 1 leaves
             {0: ["Greenish", "Green tea"]},  # no longer extends the held prefix
             {0: [" leaf", " cup"], 1: ["Yes, sure", "Yes."]}]  # 1 comes back: the cache starts over
    prefixes = ["", ""]
    for step, candidates in enumerate(steps):
        forwards = reward.forwards
        answers = {c: [(prefixes[c] if step != 3 else "") + t for t in tails] for c, tails in candidates.items()}
        cached = scorer.score(answers)
        assert reward.forwards == forwards + 1
        assert list(cached) == list(answers)
        for c, texts in answers.items():
            assert cached[c] == pytest.approx(reward.score_answers(CONVERSATIONS[c], texts), abs=1e-4)
            if step != 1 or c == 1:  # conversation 0 keeps nothing at step 1
                prefixes[c] = texts[max(range(len(texts)), key=cached[c].__getitem__)]
        assert scorer.rows == list(answers)
        # the cache holds the shared prefixes only (no tails); a row's counting slots are its tokens
        assert scorer.cache.get_seq_length() == scorer.valid.shape[1]
        assert scorer.valid.sum(1).tolist() == [len(i) for i in scorer.ids] and all(scorer.ids)
        if step == 3:  # the slots past the changed token stay in the cache, no longer counting
            assert scorer.valid.shape[1] > len(scorer.ids[0])


def test_settings_reject_unknown_keys_and_name_the_training_command(tmp_path):
    with pytest.raises(ValueError, match="unknown reward_model setting"):
        RewardSettings.from_config({"path": "x", "heads": 2})
    with pytest.raises(ValueError, match="reward_model.batch_size must be an integer >= 1"):
        RewardSettings.from_config({"path": "x", "batch_size": 0})
    missing = RewardSettings(path=str(tmp_path / "reward_models" / "mini" / "model"))
    with pytest.raises(FileNotFoundError, match="python -m pipelines.train_reward"):
        missing.check()
