"""The typed config blocks: a wrong type fails as the config composes, by its full key; a value
out of range fails in the block's `validate`, by its full key."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import REPO
from wsd.core.config import CONF
from wsd.core.schemas import (
    BENCHMARK_BLOCKS,
    JUDGE_BLOCKS,
    GenerationBlock,
    ServeBlock,
    TaxBlock,
    benchmark_block,
)
from wsd.methods import compose, method_entry
from wsd.weak_to_strong.switch import WSDBlock


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
    (WSDBlock(implementation="turbo"), "unknown wsd.implementation 'turbo'; accepted: fast, reference"),
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
        method_entry(method["name"]).block.checked(method)


def test_every_shipped_method_benchmark_and_judge_is_typed_by_its_own_schema():
    schemas = {"method": lambda name: method_entry(name).block, "benchmark": BENCHMARK_BLOCKS.get,
               "judge": JUDGE_BLOCKS.get}
    for group, schema in schemas.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            cfg = compose([f"{group}={path.stem}"], "evaluate")
            assert OmegaConf.get_type(cfg[group]) is schema(path.stem), path
    assert OmegaConf.get_type(compose(["judge=mt_bench_grading"], "evaluate").judge.client.serve) is ServeBlock
    with pytest.raises(ValueError, match="benchmark.limit must be null or an integer >= 1, got 0"):
        benchmark_block({"name": "alpaca_eval", "limit": 0})


def test_the_shipped_defaults_are_in_range():
    for block in (GenerationBlock(), WSDBlock(), TaxBlock()):
        block.validate()
    cfg = compose([])
    GenerationBlock(**cfg.generation).validate()
    WSDBlock(**cfg.wsd).validate()



# --- a default is declared once ------------------------------------------------------

def _blocks() -> list[type]:
    """Every typed block: the dataclasses of wsd/core/schemas.py and the blocks the methods
    register from their own modules."""
    import dataclasses

    from wsd.core import schemas

    blocks = {value for value in vars(schemas).values()
              if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == schemas.__name__}
    for path in schemas.schema_paths():
        schema = schemas.schema_for(path)
        blocks.add(schema if isinstance(schema, type) else type(schema))
    return sorted(blocks, key=lambda block: block.__name__)


def _schema_defaults() -> dict[str, dict[str, object]]:
    """Every typed block's defaults: {block class name: {field: default}}."""
    import dataclasses

    return {block.__name__: {f.name: f.default for f in dataclasses.fields(block) if f.default is not dataclasses.MISSING}
            for block in _blocks()}


def _starts_from(config: dict) -> list[tuple[str, str]]:
    """(schema path, where it lands) of a config file's defaults list."""
    out = []
    for entry in config.get("defaults") or []:
        if isinstance(entry, str) and entry.lstrip("/").startswith("schema/") and "@" in entry:
            path, target = entry.split("@", 1)
            out.append((path.lstrip("/").removeprefix("schema/"), target))
    return out


def test_no_shipped_config_restates_a_default_of_its_typed_block():
    """The typed blocks declare every default; a shipped file sets only
    what differs (experiment and sweep files are deltas on purpose and may name a value)."""
    from omegaconf import OmegaConf

    from wsd.core.schemas import schema_for

    restated = []
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        if path.parent.name in ("experiment", "sweep"):
            continue
        config = OmegaConf.to_container(OmegaConf.load(path))
        for schema, target in _starts_from(config):
            block = config if target == "_here_" else (config.get(target) or {})
            defaults = OmegaConf.to_container(OmegaConf.structured(schema_for(schema)))
            for key, value in block.items():
                if key not in ("defaults", "name") and key in defaults and defaults[key] == value:
                    restated.append(f"{path.relative_to(REPO)}: {key}={value!r}")
    assert not restated, "defaults written again (the typed block already declares them): " + ", ".join(restated)


# Same name, same value, another setting: a model's dtype is not training's, a bootstrap's seed
# is not the judge server's. (A judge's `name` is its registration, not a default.)
UNRELATED = {("wsd/backends/models.py", "dtype"), ("wsd/backends/reward.py", "dtype"), ("eval/stats.py", "seed")}


def test_no_module_restates_a_typed_blocks_default():
    """A dataclass field or a parameter named as a typed block's field, with the same literal
    default, is a second declaration: it must take the block's (`GenerationBlock.batch_size`)
    or none."""
    import ast

    fields = {}
    for name, defaults in _schema_defaults().items():
        for key, value in defaults.items():
            if key != "name" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
                fields.setdefault((key, value), name)
    declared = {(block.__module__, block.__name__) for block in _blocks()}
    found = []
    for path in sorted((REPO / "wsd").rglob("*.py")) + sorted((REPO / "eval").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        blocks = [n for n in tree.body if isinstance(n, ast.ClassDef) and (module, n.name) in declared]
        inside_blocks = {id(n) for block in blocks for n in ast.walk(block)}  # where the defaults are declared
        for node in ast.walk(tree):
            if id(node) in inside_blocks:
                continue
            pairs = []
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                pairs.append((node.target.id, node.value))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + \
                    node.args.kw_defaults
                pairs += [(a.arg, d) for a, d in zip(args, defaults) if d is not None]
            for key, value in pairs:
                if (str(path.relative_to(REPO)), key) in UNRELATED:
                    continue
                if isinstance(value, ast.Constant) and (key, value.value) in fields:
                    found.append(f"{path.relative_to(REPO)}:{value.lineno} {key}={value.value!r} "
                                 f"({fields[key, value.value]}.{key})")
    assert not found, "defaults written again: " + "; ".join(found)
