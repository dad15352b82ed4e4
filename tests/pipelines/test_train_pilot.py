import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pipelines import generate, train_pilot
from tests.conftest import REPO, tiny_overrides
from tests.crash import run_until_killed
from wsd.methods import compose
from wsd.runs import identity


def overrides(tiny_models, tmp_path, pairs, *extra):
    return tiny_overrides(tiny_models, tmp_path, f"train.dataset={pairs}", "deepspeed=none", "train.trl.max_steps=4",
                          "train.trl.learning_rate=1e-3", "train.trl.save_steps=2", *extra)


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("algorithm", ["dpo", "sft"])
def test_training_lowers_the_loss_changes_the_weights_and_drives_wsd(tiny_models, tmp_path, pairs, algorithm):
    summary = train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs, f"train.algorithm={algorithm}"), "train_pilot"))
    assert summary["global_steps"] == 4 and summary["train_rows"] == 15 and summary["test_rows"] == 3
    loss = summary["curve"]["loss"]
    assert loss["last"] < loss["first"]
    if algorithm == "dpo":
        assert summary["curve"]["rewards/margins"]["last"] > 0
    before, after = weights(tiny_models["pilot"]), weights(summary["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    heldout = summary["heldout"]  # both pilots answered the 3 test prompts and were judged together
    assert heldout["prompts"] == 3 and heldout["trained_score"]["n"] == heldout["untrained_score"]["n"] == 3
    assert 0 <= heldout["trained_win_rate"]["mean"] <= 1
    # the trained pilot drives WSD through `pilot=trained` (this experiment's latest pilot)
    generation = [o for o in tiny_overrides(tiny_models, tmp_path) if not o.startswith("pilot")]
    records = generate.run(compose([*generation, "pilot=trained", "method=wsd", "benchmark=mt_bench",
                                             "benchmark.limit=1"]))
    assert records["prompts"] == 2 and records["generator"] == "wsd__trained-pilot-default__tiny-base"


def kill_after_a_checkpoint(stage, args: list[str]) -> None:
    """Run `stage` in its own process, SIGKILLed from inside right after it saved checkpoint-4."""
    run_until_killed("checkpoint", 4, stage.__name__, args)
    name = stage.__name__.rsplit(".", 1)[1]
    out = identity.training(compose(args, name), root="reward_models" if name == "train_reward" else "pilots").folder
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "summary.json").exists()  # it did not finish


def test_training_resumes_after_a_kill(tiny_models, tmp_path, pairs):
    args = overrides(tiny_models, tmp_path, pairs, "train.trl.max_steps=8", "train.trl.save_steps=2",
                     "train.trl.learning_rate=1e-4")
    kill_after_a_checkpoint(train_pilot, args)
    summary = train_pilot.run(compose(args, "train_pilot"))
    assert summary["resumed_from"].endswith("/checkpoint-4") and summary["global_steps"] == 8


def test_a_longer_run_after_a_finished_shorter_one_trains_its_own_pilot(tiny_models, tmp_path, pairs):
    short = train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs, "train.trl.max_steps=2",
                                                          "train.heldout_comparison=false"), "train_pilot"))
    longer = train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs, "train.trl.max_steps=4",
                                                           "train.heldout_comparison=false"), "train_pilot"))
    assert (short["global_steps"], longer["global_steps"]) == (2, 4) and short["model"] != longer["model"]
    assert os.path.realpath(longer["latest"]) == longer["model"]  # pilot=trained is the longer run's
    assert any(not torch.equal(a, weights(longer["model"])[k]) for k, a in weights(short["model"]).items())


@pytest.mark.parametrize("extra, error, message", [
    (["train.algorithm=ppo"], ValueError, "train.algorithm='ppo' does not train a pilot; accepted: dpo, sft"),
    (["train.dataset=/no/such/data"], FileNotFoundError, "/no/such/data"),
    (["pilot.path=/no/such/model"], FileNotFoundError, "/no/such/model"),
    (["deepspeed=zero2", "deepspeed.train_batch_size=7"], ValueError, "train_batch_size 7 must equal micro batch 2"),
])
def test_bad_input_is_named_before_training(tiny_models, tmp_path, pairs, extra, error, message):
    with pytest.raises(error, match=message):
        train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs, *extra), "train_pilot"))


def test_data_without_the_columns_is_named(tiny_models, tmp_path, pairs):
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    pairs.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "rejected"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="lacks column\\(s\\) rejected that dpo training needs"):
        train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs), "train_pilot"))
    assert train_pilot.run(compose(overrides(tiny_models, tmp_path, pairs, "train.algorithm=sft"), "train_pilot"))


def launch_two_ranks(args: list[str], log, stage: str = "train_pilot") -> subprocess.CompletedProcess:
    """The README's launcher: accelerate's torchrun with 2 processes, here on gloo."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", "-m", f"pipelines.{stage}", *args]
    return subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)


@pytest.mark.parametrize("algorithm, zero", [("dpo", 2), ("sft", 2), ("dpo", 3)])
def test_deepspeed_on_two_gloo_ranks(tiny_models, tmp_path, pairs, algorithm, zero):
    args = overrides(tiny_models, tmp_path, pairs, f"deepspeed=zero{zero}", f"train.algorithm={algorithm}",
                     "train.heldout_comparison=false",
                     "train.trl.per_device_train_batch_size=1")
    with open(tmp_path / "launch.log", "w") as log:
        done = launch_two_ranks(args, log)
    assert done.returncode == 0, (tmp_path / "launch.log").read_text()[-3000:]
    summary = json.loads((identity.training(compose(args, "train_pilot")).folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_type"] == "DistributedType.DEEPSPEED"
    assert summary["deepspeed"]["zero_optimization"]["stage"] == zero
    assert summary["global_steps"] == 4
    assert summary["curve"]["loss"]["last"] < summary["curve"]["loss"]["first"]
    before, after = weights(tiny_models["pilot"]), weights(summary["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
