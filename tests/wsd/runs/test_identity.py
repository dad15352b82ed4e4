"""One result identity per stage: the folders stages wrote before it are found, not redone."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from wsd.core.store import config_key
from wsd.methods import compose
from wsd.runs import identity

# The folders the generate and evaluate stages gave these configs before `wsd.runs.identity` (commit
# 502902a), run from an empty folder: a change that renames them leaves every existing run
# behind, so it must be deliberate (and `Identity.claim` must find the old ones). Renamed on
# purpose since: batched vLLM runs, once they handed the engine `backend.max_in_flight` prompts at once.
BEFORE = {
    (): "generate/alpaca_eval/wsd__SmolLM2-135M-Instruct__gemma-3-270m__60740881ce",
    ("method=base",): "generate/alpaca_eval/base__gemma-3-270m__efb01df188",
    ("method=args",): "generate/alpaca_eval/args__gemma-3-270m__trained-rm-default__70d6403712",
    ("backend=vllm",): "generate/alpaca_eval/wsd__SmolLM2-135M-Instruct__gemma-3-270m__17afeb6f68",
    ("method=best_of_n", "method.source=pilot"):
        "generate/alpaca_eval/best_of_n__SmolLM2-135M-Instruct__trained-rm-default__3796e65303",
    ("benchmark=mt_bench", "wsd.threshold=0.5"): "generate/mt_bench/wsd__SmolLM2-135M-Instruct__gemma-3-270m__d29dc1988f",
    ("method=nudging",): "generate/alpaca_eval/nudging__SmolLM2-135M-Instruct__gemma-3-270m__de4ab553e6",
    ("method=cards",): "generate/alpaca_eval/cards__gemma-3-270m__trained-rm-default__4a2bed4ed8",
    ("benchmark=harmful", "method=base"): "generate/harmful/base__gemma-3-270m__413eb8027a",
}
JUDGED = {"harmlessness": "harmlessness__5302ebd437", "arena_hard": "arena_hard__d7b575f902",
          "alpaca_eval": "alpaca_eval__39a21bd57f"}


def test_generation_and_evaluation_folders_keep_their_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (`reward_model=trained` is a relative link that does not exist here)
    for overrides, folder in BEFORE.items():
        assert str(identity.generation(compose(list(overrides))).folder) == f"outputs/{folder}"
    for judge, name in JUDGED.items():
        cfg = compose([f"judge={judge}"], "evaluate")
        judged = identity.evaluation(cfg, identity.generation(cfg).folder, cfg.benchmark.name)
        assert str(judged.folder) == f"outputs/evaluate/alpaca_eval/{BEFORE[()].split('/')[-1]}/{name}"


def test_what_only_changes_place_or_speed_is_not_keyed(tmp_path):
    def folder(stage_identity, *overrides, stage="generate"):
        return stage_identity(compose([f"output_root={tmp_path}", *overrides], stage)).folder

    assert folder(identity.collection, stage="collect_generalign") == \
        folder(identity.collection, f"model_cache_dir={tmp_path}/elsewhere", stage="collect_generalign")
    # the generation block is keyed whole in every stage: batches decide padding and sampled draws
    for stage_identity, stage in ((identity.generation, "generate"), (identity.tax, "evaluate_tax"),
                                  (identity.collection, "collect_generalign")):
        assert folder(stage_identity, stage=stage) != folder(stage_identity, "generation.batch_size=3", stage=stage)
    # vLLM's samples change with the prompts a call holds: a collection there is keyed by its backend
    on_vllm = folder(identity.collection, "backend=vllm", stage="collect_generalign")
    assert on_vllm != folder(identity.collection, stage="collect_generalign")
    assert on_vllm != folder(identity.collection, "backend=vllm", "backend.max_in_flight=8", stage="collect_generalign")
    # a training is keyed by its data's identity, not by where the outputs live
    assert folder(identity.training, "train.trl.save_steps=99", stage="train_pilot") == \
        folder(identity.training, stage="train_pilot")
    assert folder(identity.training, "train.trl.max_steps=9", stage="train_pilot") != \
        folder(identity.training, stage="train_pilot")
    assert identity.training(compose([f"output_root={tmp_path}/a"], "train_pilot")).key == \
        identity.training(compose([f"output_root={tmp_path}/b"], "train_pilot")).key


def _written_before_identities(cfg, stage_identity) -> str:
    """A folder as the stage wrote it before identities: another name, its config, no identity.json."""
    new = stage_identity(cfg)
    old = new.root / f"{new.name}__{config_key(['before', cfg.seed])}"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (old / "summary.json").write_text(json.dumps({"finished": True}))
    return old


def test_a_folder_written_before_identities_is_found_by_its_saved_config(tmp_path, caplog):
    for stage, stage_identity in (("evaluate_tax", identity.tax), ("collect_generalign", identity.collection)):
        cfg = compose([f"output_root={tmp_path}"], stage)
        old = _written_before_identities(cfg, stage_identity)
        other = _written_before_identities(compose([f"output_root={tmp_path}", "seed=1"], stage), stage_identity)
        with caplog.at_level(logging.WARNING, "wsd.runs.identity"):
            folder = stage_identity(cfg).claim(stage_identity)
        assert not old.exists() and json.loads((folder / "summary.json").read_text()) == {"finished": True}
        assert json.loads((folder / identity.IDENTITY_FILE).read_text())["key"] == stage_identity(cfg).key
        assert other.exists() and f"renamed it to {folder}" in caplog.text

        caplog.clear()  # a config no earlier folder has: those folders are named, none is taken
        with caplog.at_level(logging.WARNING, "wsd.runs.identity"):
            fresh = stage_identity(compose([f"output_root={tmp_path}", "seed=2"], stage)).claim(stage_identity)
        assert fresh.exists() and other.exists() and not (fresh / "summary.json").exists()
        assert "written before result identities and are not reused" in caplog.text and other.name in caplog.text


def test_a_result_given_by_path_must_be_a_finished_one_of_that_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished generate result"):
        identity.finished(tmp_path, "generate")
    (tmp_path / "summary.json").write_text(json.dumps({"identity": {"stage": "evaluate"}}))
    with pytest.raises(ValueError, match="holds a result of stage evaluate, not of generate"):
        identity.finished(tmp_path, "generate")


def test_per_request_scheduling_and_the_vllm_batch_key_their_runs(tmp_path, monkeypatch):
    """vLLM's per-request path is keyed apart, and so is the number of prompts a batched vLLM
    run hands the engine at once (in bf16 both change the numbers)."""
    monkeypatch.chdir(tmp_path)
    folder = lambda *o: str(identity.generation(compose(list(o))).folder)  # noqa: E731
    assert folder("backend=vllm") == f"outputs/{BEFORE[('backend=vllm',)]}"
    assert folder("backend=vllm", "backend.max_in_flight=8") != folder("backend=vllm")
    per_request = folder("backend=vllm", "backend.scheduling=per_request")
    assert per_request != folder("backend=vllm")
    assert per_request != folder("backend=vllm", "backend.scheduling=per_request", "backend.max_in_flight=8")
