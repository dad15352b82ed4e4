"""Decode benchmark on the embedded pair, every contender side by side in one process.

    make bench                                        # the issue's settings (about 30 min on 2 cores)
    python -m benchmarks.decode --prompts 4 --length 64 --draft 32 --dtypes float32 --throughput 1 4

Fixed output length (no EOS, no stop strings): every method writes exactly L tokens per prompt
(WSD: k kept draft tokens + L - k base tokens), so wall times compare like for like. For each
dtype: base-only on vLLM; the authors' recipe as released (vLLM draft, HF check at batch 1,
vLLM continuation); the three passes all on vLLM, batched; WSD fast on vLLM (`ChunkedWSD`);
WSD fast on HF (`FastWSD`); T_ideal from vLLM's per-token times. Then the equivalence counts,
where the time goes, throughput by prompts in flight, and what a sweep costs. Every method
starts from a cold prefix cache. The JSON goes to outputs/bench/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from wsd.backends.decoding import base_texts, encode
from wsd.backends.engines import load_engine
from wsd.backends.models import ModelSpec
from wsd.core.prompts import pilot_prompt
from wsd.data.prompt_sets import load_benchmark
from wsd.methods import compose
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.switch import WSDSettings, first_switch

SWEEP = [(w, t) for w in (4, 6, 8) for t in (0.7, 0.8, 0.9)]
PHASES = ("draft", "check", "target")


class AuthorsBase:
    """The base model as the authors' release uses it: vLLM writes, a transformers model
    checks one prompt at a time."""

    def __init__(self, served, eager):
        self.served, self.eager = served, eager
        self.spec, self.tokenizer = served.spec, served.tokenizer

    name = property(lambda self: self.served.name)
    eos_token_ids = property(lambda self: self.served.eos_token_ids)
    context_length = property(lambda self: self.served.context_length)

    def generate(self, *args, **kwargs):
        return self.served.generate(*args, **kwargs)

    def score(self, sequences, starts):
        return self.eager.score(sequences, starts)


def timed(method, prompts, *engines) -> tuple[float, dict]:
    """Wall seconds and records by prompt id, from a cold prefix cache."""
    for engine in engines:
        getattr(engine, "reset_prefix_cache", lambda: None)()
    start = time.perf_counter()
    records = {p.id: r for p, r in method.generate_many(prompts)}
    return time.perf_counter() - start, records


def timed_generate(engine, ids: list[list[int]], length: int) -> float:
    engine.reset_prefix_cache()
    start = time.perf_counter()
    engine.generate(ids, [length] * len(ids), [], fixed_length=True)
    return time.perf_counter() - start


def window_gaps(probs: list[float], settings: WSDSettings) -> list[float]:
    """Each window score's distance to the threshold, in log space (how near a switch decision was)."""
    logs = [math.log(max(p, 1e-300)) for p in probs]
    w, target = settings.window, math.log(settings.threshold)
    return [abs(sum(logs[i - w + 1 : i + 1]) / w - target) for i in range(w - 1, len(logs))]


def parting_char(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def top2_gap(model, ids: list[int]) -> float:
    """The top-2 logit gap of a transformers model's next token after `ids`."""
    with torch.inference_mode():
        logits = model.model(torch.tensor([ids], device=model.device), logits_to_keep=1).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def near_tie(ref: dict, got: dict, settings: WSDSettings, base, messages) -> dict:
    """What explains a difference: the smallest distance of a window score to the threshold
    in log space (switch decisions), and the top-2 logit gap of the HF base where the two
    responses part (continuations)."""
    n = min(len(ref["base_token_probs"]), len(got["base_token_probs"]))
    gaps = window_gaps(ref["base_token_probs"][:n], settings) + window_gaps(got["base_token_probs"][:n], settings)
    at = parting_char(ref["response"], got["response"])
    logit_gap = None
    if ref["keep_count"] == got["keep_count"] and hasattr(base, "model"):
        logit_gap = top2_gap(base, encode(base.tokenizer, base_texts(base, messages)[0] + ref["response"][:at]))
    return {"id": ref["id"], "keep_count": [ref["keep_count"], got["keep_count"]],
            "switch": [first_switch(ref["base_token_probs"], settings.window, settings.threshold),
                       first_switch(got["base_token_probs"], settings.window, settings.threshold)],
            "max_prob_difference": max((abs(a - b) for a, b in zip(ref["base_token_probs"][:n],
                                                                   got["base_token_probs"][:n])), default=0.0),
            "min_window_score_gap_log": min(gaps, default=None), "top2_logit_gap_at_parting": logit_gap,
            "responses_part_at_char": at,
            "explained": (min(gaps, default=1.0) < 1e-3) or (logit_gap is not None and logit_gap < 1e-4)}


def compare(reference: dict, other: dict, settings: WSDSettings, base, prompts) -> tuple[int, list[dict]]:
    """(prompts with the same keep_count and response, what differs and why)."""
    messages = {p.id: p.messages for p in prompts}
    differ = [near_tie({**ref, "id": pid}, other[pid], settings, base, messages[pid]) for pid, ref in reference.items()
              if (ref["keep_count"], ref["response"]) != (other[pid]["keep_count"], other[pid]["response"])]
    return len(reference) - len(differ), differ


def with_dtype(cfg_node, dtype: str) -> ModelSpec:
    return dataclasses.replace(ModelSpec.from_config(cfg_node), dtype=dtype)


def run_dtype(args, console, r: dict, prompts, dtype: str, hf_reference: dict | None) -> tuple[dict, dict | None]:
    """The table for one dtype; the HF reference's records (fp32, made once) come back for
    the next dtype's cross-backend check."""
    L, D, N = args.length, args.draft, len(prompts)
    settings = WSDSettings(args.window, args.threshold, D, L, fixed_length=True)
    cache = r["model_cache_dir"]
    vpilot, vbase = (load_engine(with_dtype(r[role], dtype), r["backend"], cache) for role in ("pilot", "base"))
    hpilot, hbase = (load_engine(with_dtype(r[role], dtype), {"name": "hf"}, cache) for role in ("pilot", "base"))
    pilot_ids = [encode(vpilot.tokenizer, pilot_prompt(vpilot.tokenizer, p.messages)) for p in prompts]
    base_ids = [encode(vbase.tokenizer, base_texts(vbase, p.messages)[0]) for p in prompts]
    started = time.perf_counter()
    vpilot.generate(pilot_ids[:1], [2], [])  # engine start-up and first-use costs, outside every timing
    vbase.generate(base_ids[:1], [2], [])
    vbase.score([base_ids[0]], [len(base_ids[0]) - 4])
    hbase.score([base_ids[0]], [len(base_ids[0]) - 4])
    console.print(f"[bold]{dtype}[/]: vLLM engines started in {time.perf_counter() - started:.1f} s")
    options = FastOptions(batch_size=N, chunk_tokens=args.chunk)

    t_base = timed_generate(vbase, base_ids, L)
    t_pilot = timed_generate(vpilot, pilot_ids, D)
    per_token = {"pilot": t_pilot / (N * D), "base": t_base / (N * L)}
    contenders = {
        "authors' recipe (vLLM draft, HF check batch 1, vLLM continuation)":
            (ReferenceWSD(vpilot, AuthorsBase(vbase, hbase), settings, batch_size=N), (vpilot, vbase)),
        "three passes on vLLM, batched": (ReferenceWSD(vpilot, vbase, settings, batch_size=N), (vpilot, vbase)),
        "WSD fast on vLLM": (ChunkedWSD(vpilot, vbase, settings, options), (vpilot, vbase)),
        "WSD fast on HF": (FastWSD(hpilot, hbase, settings, FastOptions(batch_size=N)), ()),
    }
    seconds, records = {"base only on vLLM": t_base}, {}
    for name, (method, engines) in contenders.items():
        seconds[name], records[name] = timed(method, prompts, *engines)
        console.print(f"  {name}: {seconds[name]:.1f} s")
    if hf_reference is None and args.hf_reference:
        hf_seconds, hf_reference = timed(ReferenceWSD(hpilot, hbase, settings), prompts)
        console.print(f"  HF reference (batch 1, for the cross-backend check): {hf_seconds:.1f} s")
    fast = records["WSD fast on vLLM"]
    ks = [fast[p.id]["keep_count"] for p in prompts]
    seconds["T_ideal (vLLM per-token times)"] = sum(k * per_token["pilot"] + (L - k) * per_token["base"] for k in ks)

    table = Table(title=f"{dtype}: {N} AlpacaEval prompts x {L} tokens, draft {D}, w={args.window}, "
                        f"gamma={args.threshold}")
    for col in ("method", "wall s", "tokens/s", "/ base only", "WSD-vLLM / this"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, s in seconds.items():
        table.add_row(name, f"{s:.1f}", f"{N * L / s:.1f}", f"{s / t_base:.3f}", f"{seconds['WSD fast on vLLM'] / s:.3f}")
    console.print(table)
    where = {name: {ph: sum(rec["seconds"][ph] for rec in recs.values()) for ph in PHASES}
             for name, recs in records.items()}
    for name, phases in where.items():
        console.print(f"  {name:70s} " + ", ".join(f"{ph} {v:5.1f} s" for ph, v in phases.items()))
    console.print(f"  WSD fast on vLLM: requests {contenders['WSD fast on vLLM'][0].counter}; engine requests "
                  f"base {vbase.requests}, pilot {vpilot.requests}; mean k {sum(ks) / N:.1f}; early-stopped "
                  f"{sum(rec['early_stopped'] for rec in fast.values())} of {N}")

    three = records["three passes on vLLM, batched"]
    same_fast, differ_fast = compare(three, fast, settings, hbase, prompts)
    equivalence = {"vLLM fast == vLLM three passes": [same_fast, N], "fast vs three passes, differences": differ_fast}
    if hf_reference is not None:
        same, differ = compare(hf_reference, three, settings, hbase, prompts)
        key = "vLLM three passes == HF reference" + ("" if dtype == "float32" else " (fp32)")
        equivalence[key], equivalence["vLLM vs HF reference, differences"] = [same, N], differ
    for key, value in equivalence.items():
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            console.print(f"  {key}: {value[0]} of {value[1]}")
    for item in differ_fast:
        console.print(f"    {item}")
    targets = {"WSD-vLLM / WSD-HF": (seconds["WSD fast on vLLM"] / seconds["WSD fast on HF"], 0.5),
               "WSD-vLLM / three passes on vLLM": (seconds["WSD fast on vLLM"] / seconds["three passes on vLLM, batched"], 0.75),
               "WSD-vLLM / base only on vLLM": (seconds["WSD fast on vLLM"] / t_base, 1.03)}
    for key, (value, target) in targets.items():
        console.print(f"  {key} = {value:.3f} (target <= {target}: {'met' if value <= target else 'NOT met'})")

    result = {"seconds": seconds, "per_token_seconds": per_token, "where_the_time_goes": where,
              "targets": {k: {"value": v, "target": t} for k, (v, t) in targets.items()},
              "equivalence": equivalence, "keep_counts": dict(zip([p.id for p in prompts], ks)),
              "three_pass_records": three, "fast_requests": contenders["WSD fast on vLLM"][0].counter}
    if args.throughput and dtype == args.dtypes[0]:
        result["throughput"] = throughput(args, console, r, vpilot, vbase, settings)
    if args.sweep_prompts and dtype == args.dtypes[0]:
        result["sweep_requests"] = sweep(args, console, prompts[: args.sweep_prompts], vpilot, vbase, r)
    for engine in (vpilot, vbase):
        engine.close()
    return result, hf_reference


def throughput(args, console, r, vpilot, vbase, settings) -> dict:
    """Tokens/s with 1, 8, 32, 64 prompts in flight (batch = prompts in flight)."""
    L = args.throughput_length
    s = dataclasses.replace(settings, target_max_tokens=L, draft_max_tokens=min(settings.draft_max_tokens, L // 2))
    out = {}
    for size in args.throughput:
        prompts = load_benchmark({**r["benchmark"], "limit": max(size, args.throughput_min_prompts)})
        base_ids = [encode(vbase.tokenizer, base_texts(vbase, p.messages)[0]) for p in prompts]
        t_base = 0.0
        for i in range(0, len(prompts), size):
            t_base += timed_generate(vbase, base_ids[i : i + size], L)
        t_wsd, _ = timed(ChunkedWSD(vpilot, vbase, s, FastOptions(batch_size=size, chunk_tokens=args.chunk)),
                         prompts, vpilot, vbase)
        tokens = len(prompts) * L
        out[size] = {"prompts": len(prompts), "base_only_tokens_per_s": tokens / t_base,
                     "wsd_tokens_per_s": tokens / t_wsd, "wsd_over_base_only": t_wsd / t_base}
        console.print(f"  {size:2d} in flight ({len(prompts)} prompts x {L}): base only {tokens / t_base:6.1f} "
                      f"tokens/s, WSD fast on vLLM {tokens / t_wsd:6.1f} tokens/s ({t_wsd / t_base:.2f}x)")
    return out


def sweep(args, console, prompts, vpilot, vbase, r) -> dict:
    """A 9-point (window, threshold) sweep over one shared draft cache adds no drafting or
    scoring requests after its first point."""
    import tempfile

    identity = {"pilot": r["pilot"]["name"], "base": r["base"]["name"], "draft": args.draft, "fixed_length": True}
    options = FastOptions(batch_size=len(prompts), chunk_tokens=args.chunk, early_stop=False)
    total = {}
    with tempfile.TemporaryDirectory() as shared:
        for i, (window, threshold) in enumerate(SWEEP):
            point = ChunkedWSD(vpilot, vbase, WSDSettings(window, threshold, args.draft, args.length, fixed_length=True),
                               options, DraftCache(shared, identity))
            timed(point, prompts)
            if i == 0:
                first = dict(point.counter)
            total = {k: total.get(k, 0) + v for k, v in point.counter.items()}
    console.print(f"  sweep of {len(SWEEP)} points over {len(prompts)} prompts: first point {first}, all points {total}")
    return {"first_point": first, "all_points": total}


def run(args) -> dict:
    console = Console()
    console.width = max(console.width, 140)
    cfg = compose([f"pilot={args.pilot}", f"base={args.base}", "backend=vllm", "benchmark=alpaca_eval",
                   f"benchmark.limit={args.prompts}"])
    r = OmegaConf.to_container(cfg, resolve=True)
    prompts = load_benchmark(r["benchmark"])
    console.print(f"[bold]{len(prompts)} prompts, L={args.length}, draft budget {args.draft}, chunk {args.chunk}, "
                  f"{torch.get_num_threads()} threads")
    results, hf_reference = {}, None
    for dtype in args.dtypes:
        results[dtype], hf_reference = run_dtype(args, console, r, prompts, dtype, hf_reference)
    if "float32" in results and "bfloat16" in results:
        a, b = results["float32"]["three_pass_records"], results["bfloat16"]["three_pass_records"]
        differ = sum((a[k]["keep_count"], a[k]["response"]) != (b[k]["keep_count"], b[k]["response"]) for k in a)
        results["bf16_vs_fp32_three_passes_differ"] = [differ, len(a)]
        console.print(f"bf16 vs fp32 (three passes on vLLM): {differ} of {len(a)} prompts differ")
    return {"settings": vars(args), **results}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", default="smollm2_135m_instruct")
    parser.add_argument("--base", default="gemma3_270m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="L: output tokens per prompt")
    parser.add_argument("--draft", type=int, default=128, help="pilot draft budget")
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--chunk", type=int, default=64, help="WSD fast on vLLM: draft tokens per chunk")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--hf-reference", action=argparse.BooleanOptionalAction, default=True,
                        help="the HF reference engine (batch 1) for the cross-backend check")
    parser.add_argument("--throughput", type=int, nargs="*", default=[1, 8, 32, 64], help="prompts in flight")
    parser.add_argument("--throughput-length", type=int, default=128)
    parser.add_argument("--throughput-min-prompts", type=int, default=8)
    parser.add_argument("--sweep-prompts", type=int, default=4, help="0 skips this section")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    torch.manual_seed(42)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decode-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
