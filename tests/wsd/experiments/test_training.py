"""TRL's own arguments pass through the train block; the stage's own settings stay the stage's."""

import pytest

from pipelines import train_pilot
from tests.conftest import tiny_overrides
from wsd.experiments import training
from wsd.methods import compose


def args_of(tmp_path, *overrides, stage="train_pilot"):
    cfg = compose([f"output_root={tmp_path}", "deepspeed=none", *overrides], stage)
    return training.trainer_args(cfg, tmp_path, None, [])


def test_the_train_block_reaches_trls_config_as_it_is(tmp_path):
    dpo = args_of(tmp_path, "train.trl.learning_rate=3e-4", "+train.trl.gradient_checkpointing=false",
                  "+train.dpo.loss_type=[ipo]", "+train.dpo.precompute_ref_log_probs=true", "seed=7")
    assert type(dpo).__name__ == "DPOConfig"
    assert (dpo.learning_rate, dpo.gradient_checkpointing, dpo.loss_type, dpo.precompute_ref_log_probs) == \
        (3e-4, False, ["ipo"], True)
    assert dpo.beta == 0.1 and dpo.seed == dpo.data_seed == 7 and dpo.output_dir == str(tmp_path / "checkpoints")
    sft = args_of(tmp_path, "train.algorithm=sft", "train.trl.max_length=64")  # DPO's beta stays with DPO
    assert type(sft).__name__ == "SFTConfig" and sft.max_length == 64 and not hasattr(sft, "beta")
    reward = args_of(tmp_path, "train.trl.per_device_train_batch_size=3", stage="train_reward")
    assert type(reward).__name__ == "RewardConfig" and reward.per_device_eval_batch_size == 3


def test_a_name_trl_does_not_have_is_rejected_before_the_model_loads(tiny_models, tmp_path, pairs, monkeypatch):
    monkeypatch.setattr(training, "initial_model", lambda *a: pytest.fail("the model was loaded"))
    cfg = compose(tiny_overrides(tiny_models, tmp_path, f"train.dataset={pairs}", "deepspeed=none",
                                 "+train.trl.max_prompt_length=128"), "train_pilot")
    with pytest.raises(ValueError, match="max_prompt_length.*DPOConfig"):
        train_pilot.run(cfg)
    with pytest.raises(ValueError, match="train.trl sets seed"):
        args_of(tmp_path, "+train.trl.seed=3")
