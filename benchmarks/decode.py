"""Decode benchmark on the embedded pair: base-only vs WSD reference vs WSD fast vs T_ideal.

    make bench                                   # the issue's settings (~25 min on 2 cores)
    python -m benchmarks.decode --prompts 4 --length 64 --draft 32 --throughput-prompts 2

Fixed output length (no EOS, no stop strings): every method writes exactly L tokens per prompt
(WSD: k kept draft tokens + L - k base tokens), so wall times compare like for like. All
methods run side by side in this one process; the JSON goes to outputs/bench/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from pipelines.generate import compose
from wsd.benchmarks import load_benchmark
from wsd.decoding import WSDSettings, base_texts, encode, greedy_config, left_pad, pad_id
from wsd.draft_cache import DraftCache
from wsd.fast import FastOptions, FastWSD
from wsd.models import ModelSpec, load_model
from wsd.prompts import pilot_prompt
from wsd.reference import ReferenceWSD
from wsd.switch import first_switch

SWEEP = [(w, t) for w in (4, 6, 8) for t in (0.7, 0.8, 0.9)]


@torch.inference_mode()
def batched_generate(loaded, prompt_ids: list[list[int]], new_tokens: int, batch_size: int) -> float:
    """Wall seconds for plain batched greedy generation of exactly `new_tokens` per prompt."""
    pad = pad_id(loaded)
    start = time.perf_counter()
    for i in range(0, len(prompt_ids), batch_size):
        ids, mask = left_pad(prompt_ids[i : i + batch_size], pad, loaded.device)
        loaded.model.generate(input_ids=ids, attention_mask=mask,
                              generation_config=greedy_config(loaded, new_tokens, fixed_length=True))
    return time.perf_counter() - start


def timed_records(engine, prompts) -> tuple[float, dict]:
    start = time.perf_counter()
    records = {p.id: r for p, r in engine.generate_many(prompts)}
    return time.perf_counter() - start, records


def mismatches(reference: dict, fast: dict, settings: WSDSettings) -> list[dict]:
    """Prompts whose kept count or response differ, with what a numerical tie would show:
    window scores next to the threshold, or where the two texts part."""
    found = []
    for pid, ref in reference.items():
        got = fast[pid]
        if (ref["keep_count"], ref["response"]) == (got["keep_count"], got["response"]):
            continue
        n = min(len(ref["base_token_probs"]), len(got["base_token_probs"]))
        gaps = [abs(a - b) for a, b in zip(ref["base_token_probs"][:n], got["base_token_probs"][:n])]
        at = next((i for i, (a, b) in enumerate(zip(ref["response"], got["response"])) if a != b),
                  min(len(ref["response"]), len(got["response"])))
        found.append({
            "id": pid, "keep_count": [ref["keep_count"], got["keep_count"]],
            "switch": [first_switch(ref["base_token_probs"], settings.window, settings.threshold),
                       first_switch(got["base_token_probs"], settings.window, settings.threshold)],
            "max_prob_difference": max(gaps, default=0.0),
            "responses_part_at_char": at,
            "context": [ref["response"][max(0, at - 30) : at + 30], got["response"][max(0, at - 30) : at + 30]],
        })
    return found


def run(args) -> dict:
    console = Console()
    console.width = max(console.width, 110)
    cfg = compose([f"pilot={args.pilot}", f"base={args.base}", "benchmark=alpaca_eval",
                   f"benchmark.limit={args.prompts}"])
    pilot = load_model(ModelSpec.from_config(cfg.pilot), cfg.model_cache_dir)
    base = load_model(ModelSpec.from_config(cfg.base), cfg.model_cache_dir)
    prompts = load_benchmark(OmegaConf.to_container(cfg.benchmark, resolve=True))
    L, settings = args.length, WSDSettings(args.window, args.threshold, args.draft, args.length, fixed_length=True)
    pilot_ids = [encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, p.messages)) for p in prompts]
    base_ids = [encode(base.tokenizer, base_texts(base, p.messages)[0]) for p in prompts]
    batched_generate(pilot, pilot_ids[:1], 2, 1)  # warm-up: first calls pay one-time costs
    batched_generate(base, base_ids[:1], 2, 1)

    console.print(f"[bold]{len(prompts)} prompts, L={L}, draft budget {args.draft}, batch {args.batch_size}")
    t_base_only = batched_generate(base, base_ids, L, args.batch_size)
    t_pilot_only = batched_generate(pilot, pilot_ids, args.draft, args.batch_size)
    per_token = {"pilot": t_pilot_only / (len(prompts) * args.draft), "base": t_base_only / (len(prompts) * L)}
    console.print(f"base-only {t_base_only:.1f} s, pilot-only {t_pilot_only:.1f} s")
    t_reference, reference = timed_records(ReferenceWSD(pilot, base, settings), prompts)
    console.print(f"reference {t_reference:.1f} s")
    fast_engine = FastWSD(pilot, base, settings, FastOptions(batch_size=args.batch_size))
    t_fast, fast = timed_records(fast_engine, prompts)
    console.print(f"fast {t_fast:.1f} s")
    ks = [fast[p.id]["keep_count"] for p in prompts]
    t_ideal = sum(k * per_token["pilot"] + (L - k) * per_token["base"] for k in ks)
    bad = mismatches(reference, fast, settings)

    tokens = len(prompts) * L
    rows = [("base only (batched generate)", t_base_only), ("WSD reference", t_reference),
            ("WSD fast", t_fast), ("T_ideal", t_ideal)]
    table = Table(title=f"Decode benchmark: {len(prompts)} AlpacaEval prompts x {L} tokens")
    for col in ("method", "wall s", "tokens/s", "/ base only", "fast / this"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.1f}", f"{tokens / seconds:.1f}", f"{seconds / t_base_only:.3f}",
                      f"{t_fast / seconds:.3f}")
    console.print(table)
    ratios = {"fast/base_only": t_fast / t_base_only, "fast/reference": t_fast / t_reference,
              "fast/ideal": t_fast / t_ideal}
    targets = {"fast/base_only": 0.95, "fast/reference": 0.6, "fast/ideal": 1.15}
    for key, value in ratios.items():
        console.print(f"  T_{key.replace('/', ' / T_')} = {value:.3f} (target <= {targets[key]}: "
                      f"{'met' if value <= targets[key] else 'NOT met'})")
    console.print(f"mismatches fast vs reference (keep_count or response): {len(bad)} of {len(prompts)}")
    for item in bad:
        console.print(f"  {item}")
    profile = {phase: sum(r["seconds"][phase] for r in fast.values()) for phase in ("draft", "check", "target")}
    console.print(f"fast path: pilot drafting {profile['draft']:.1f} s, base scoring {profile['check']:.1f} s, "
                  f"continuation {profile['target']:.1f} s; forward passes {fast_engine.counter}; "
                  f"mean k {sum(ks) / len(ks):.1f}, early-stopped "
                  f"{sum(r['early_stopped'] for r in fast.values())} of {len(prompts)}; "
                  f"mean draft tokens fast {sum(r['draft_tokens'] for r in fast.values()) / len(fast):.1f} "
                  f"vs reference {sum(r['draft_tokens'] for r in reference.values()) / len(reference):.1f}")

    result = {
        "settings": vars(args), "device": "cpu", "threads": torch.get_num_threads(),
        "seconds": dict(rows), "ratios": ratios, "targets": targets, "per_token_seconds": per_token,
        "keep_counts": dict(zip([p.id for p in prompts], ks)), "mismatches": bad,
        "fast_profile_seconds": profile, "fast_forwards": fast_engine.counter,
    }
    throughput = {}
    subset = prompts[: args.throughput_prompts]
    for size in (1, 4, 8, 16) if subset else ():
        seconds, _ = timed_records(FastWSD(pilot, base, settings, FastOptions(batch_size=size)), subset)
        throughput[size] = {"seconds": seconds, "tokens_per_s": len(subset) * L / seconds}
        console.print(f"fast engine, batch {size:2d}: {len(subset) * L / seconds:6.1f} tokens/s "
                      f"({len(subset)} prompts, {seconds:.1f} s)")

    sweep_prompts = prompts[: args.sweep_prompts]
    sweep_options = FastOptions(batch_size=args.batch_size, early_stop=False)
    identity = {"pilot": args.pilot, "base": args.base, "draft": args.draft, "fixed_length": True}
    forwards = {}
    if not sweep_prompts:
        return {**result, "throughput_by_batch_size": throughput, "sweep_forwards": forwards}
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
        single = FastWSD(pilot, base, settings, sweep_options, DraftCache(one, identity))
        timed_records(single, sweep_prompts)
        forwards["1-point run (full drafts)"] = dict(single.counter)
        early = FastWSD(pilot, base, settings, FastOptions(batch_size=args.batch_size))
        timed_records(early, sweep_prompts)
        forwards["1-point run (early stopping)"] = dict(early.counter)
        total = {key: 0 for key in single.counter}
        for window, threshold in SWEEP:
            point = FastWSD(pilot, base, WSDSettings(window, threshold, args.draft, L, fixed_length=True),
                            sweep_options, DraftCache(many, identity))
            timed_records(point, sweep_prompts)
            total = {key: total[key] + point.counter[key] for key in total}
        forwards[f"{len(SWEEP)}-point sweep (shared draft cache)"] = total
    for name, counts in forwards.items():
        console.print(f"{name:38s} pilot drafting {counts['pilot_drafting']:5d}, base scoring "
                      f"{counts['base_scoring']:5d}, base continuation {counts['base_continuation']:5d}"
                      f"  ({len(sweep_prompts)} prompts)")

    return {**result, "throughput_by_batch_size": throughput, "sweep_forwards": forwards}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", default="smollm2_135m_instruct")
    parser.add_argument("--base", default="gemma3_270m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="L: output tokens per prompt")
    parser.add_argument("--draft", type=int, default=128, help="pilot draft budget")
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--throughput-prompts", type=int, default=8, help="0 skips this section")
    parser.add_argument("--sweep-prompts", type=int, default=4, help="0 skips this section")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    torch.manual_seed(42)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decode-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
