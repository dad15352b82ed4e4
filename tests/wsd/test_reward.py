import pytest

from wsd.reward import RewardModel, RewardSettings

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def reward(tiny_reward_model):
    return RewardModel(RewardSettings(path=tiny_reward_model, batch_size=2))


def test_extensions_from_the_cache_equal_full_forwards_as_the_prefix_grows(reward):
    """Candidates are scored from the cached prefix (one forward each call), whether one was
    kept or none; each reward equals the full text's own forward."""
    scorer = reward.extensions(MESSAGES)
    prefix = ""
    for step, candidates in enumerate([["Blue", "Red", "A"], [" sky", " and", "."], [" is", "!", " green"]]):
        forwards = reward.forwards
        cached = scorer.score(prefix, candidates)
        assert reward.forwards == forwards + 1
        full = reward.score_answers(MESSAGES, [prefix + c for c in candidates])
        assert cached == pytest.approx(full, abs=1e-4)
        if step != 1:  # step 1 keeps none: the next call starts from the same prefix
            prefix += candidates[max(range(len(candidates)), key=cached.__getitem__)]
        assert scorer.cache.get_seq_length() == len(scorer.ids) > 0  # the shared prefix only, no tails
    assert scorer.cache.get_seq_length() > 0


def test_settings_reject_unknown_keys_and_name_the_training_command(tmp_path):
    with pytest.raises(ValueError, match="unknown reward_model setting"):
        RewardSettings.from_config({"path": "x", "heads": 2})
    with pytest.raises(ValueError, match="reward_model.batch_size must be an integer >= 1"):
        RewardSettings.from_config({"path": "x", "batch_size": 0})
    missing = RewardSettings(path=str(tmp_path / "reward_models" / "mini" / "model"))
    with pytest.raises(FileNotFoundError, match="python -m pipelines.train_reward"):
        missing.check()
