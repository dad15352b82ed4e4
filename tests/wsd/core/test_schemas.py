"""The typed config blocks: a wrong type fails as the config composes, by its full key; a value
out of range fails in the block's `validate`, by its full key."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from wsd.core.config import CONF, compose
from wsd.core.schemas import BENCHMARK_BLOCKS, JUDGE_BLOCKS, METHOD_BLOCKS, WSDBlock, GenerationBlock, ServeBlock, TaxBlock, benchmark_block, method_block


@pytest.mark.parametrize("override, stage, key", [
    ("generation.batch_size=eight", "generate", "generation.batch_size"),
    ("wsd.threshold=high", "generate", "wsd.threshold"),
    ("wsd.early_stop=sometimes", "evaluate", "wsd.early_stop"),
    ("tax.limit=all", "evaluate_tax", "tax.limit"),
    ("train.lora=16", "train_pilot", "train.lora"),
    ("method.k=many", "generate", "method.k"),  # (after method=args, below)
    ("benchmark.limit=some", "generate", "benchmark.limit"),
    ("judge.client.concurrency=many", "evaluate", "judge.client.concurrency"),  # (judge=arena_hard, below)
])
def test_a_wrong_type_fails_as_the_config_composes_naming_its_key(override, stage, key):
    with pytest.raises(ConfigCompositionException) as raised:
        chosen = {"method.": ["method=args"], "judge.": ["judge=arena_hard"]}.get(override.split(".")[0] + ".", [])
        compose([*chosen, override], stage)
    assert f"full_key: {key}" in str(raised.value.__cause__)


def test_composed_blocks_are_typed_and_keep_their_values():
    cfg = compose(["generation.top_p=1", "wsd.window=3"])
    assert cfg.generation.top_p == 1.0 and isinstance(cfg.generation.top_p, float) and cfg.wsd.window == 3
    assert compose(["experiment=mini"], "train_pilot").train.trl.learning_rate == 5.0e-6


@pytest.mark.parametrize("block, message", [
    (GenerationBlock(batch_size=0), "generation.batch_size must be an integer >= 1, got 0"),
    (GenerationBlock(temperature=-1.0), "generation.temperature must be a number >= 0"),
    (GenerationBlock(top_p=0.0), r"generation.top_p must be in \(0, 1\]"),
    (GenerationBlock(stop_strings=["Q:", ""]), "generation.stop_strings must be non-empty strings"),
    (WSDBlock(window=0), "wsd.window must be an integer >= 1, got 0"),
    (WSDBlock(threshold=1.5), r"wsd.threshold must be a number in \[0, 1\], got 1.5"),
    (WSDBlock(draft_max_tokens=0), "wsd.draft_max_tokens must be an integer >= 1"),
    (WSDBlock(engine="turbo"), "unknown wsd.engine 'turbo'; accepted: fast, reference"),
    (TaxBlock(tasks=[]), "tax.tasks must be a non-empty list"),
    (TaxBlock(limit=0), "tax.limit must be null or an integer >= 1, got 0"),
    (TaxBlock(humaneval_timeout=0.0), "tax.humaneval_timeout must be a positive number of seconds"),
])
def test_a_value_out_of_range_is_named_by_its_key(block, message):
    with pytest.raises(ValueError, match=message):
        block.validate()


@pytest.mark.parametrize("method, message", [
    ({"name": "nudging", "threshold": 0.0}, r"method.threshold must be in \(0, 1\], got 0.0"),
    ({"name": "args", "k": 0}, "method.k must be an integer >= 1, got 0"),
    ({"name": "args", "prompt": "chat"}, "method.prompt must be base or urial"),
    ({"name": "cards", "min_segment_tokens": 9, "max_segment_tokens": 8}, "must not exceed method.max_segment"),
    ({"name": "cards", "reward_target": "high"}, "method.reward_target must be a number or auto"),
    ({"name": "best_of_n", "temperature": 0.0}, "method.temperature must be > 0"),
])
def test_a_method_block_out_of_range_is_named_by_its_key(method, message):
    with pytest.raises(ValueError, match=message):
        method_block(method)


def test_every_shipped_method_benchmark_and_judge_is_typed_by_its_own_schema():
    for group, schemas in (("method", METHOD_BLOCKS), ("benchmark", BENCHMARK_BLOCKS), ("judge", JUDGE_BLOCKS)):
        for path in sorted((CONF / group).glob("*.yaml")):
            cfg = compose([f"{group}={path.stem}"], "evaluate")
            assert OmegaConf.get_type(cfg[group]) is schemas[path.stem], path
    assert OmegaConf.get_type(compose(["judge=mt_bench_grading"], "evaluate").judge.client.serve) is ServeBlock
    with pytest.raises(ValueError, match="benchmark.limit must be null or an integer >= 1, got 0"):
        benchmark_block({"name": "alpaca_eval", "limit": 0})


def test_the_shipped_defaults_are_in_range():
    for block in (GenerationBlock(), WSDBlock(), TaxBlock()):
        block.validate()
    cfg = compose([])
    GenerationBlock(**cfg.generation).validate()
    WSDBlock(**cfg.wsd).validate()

