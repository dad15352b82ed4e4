"""Scheduling benchmark on the embedded pair, vLLM: batches of 8 (what `backend=vllm` did until
ae0907d), all prompts at once and per-request pipelines on vLLM's async
engine, offline and served, side by side in one process (fp32), then nudging three ways and
the bf16 agreement of per request with the three passes.

    make bench                                   # this table after the decode benchmark's
    python -m benchmarks.scheduling --prompts 32 --length 128 --draft 64 --clients 1 8 32

Fixed output length (no EOS, no stop strings): every method writes exactly L tokens per prompt,
so tokens/s compare like for like. Offline: base only (all prompts in one call), the three
passes on vLLM (all prompts at once: `backend=vllm`'s WSD since ae0907d), WSD's chunked fast
path in batches of 8 (`backend=vllm` until then) and all at once, and WSD per request
(`backend.scheduling=per_request`, every prompt submitted at once). Then the generate stage's
own setting (`experiment=mini`: real stops, 192-token answers; `--stage-repeats`, 0 skips it):
WSD, base and pilot as `backend=vllm` ran them until ae0907d (8 prompts per call, WSD chunked)
and as they run now (every prompt at once, WSD's three passes), repeated. Served: `pipelines.serve`'s app over the per-request WSD, on
127.0.0.1, with 1, 8 and 32 clients each sending the next prompt when its answer arrives
(tokens/s, p50/p95 latency). Equivalence: per-request and batched records compared by
`keep_count` and `response`. Nudging (the first --nudging-prompts prompts): on HF one prompt
at a time; on vLLM one prompt at a time, all prompts in lockstep rounds (`backend=vllm`, one
call per engine and round) and per request (every prompt's handovers as requests of their
own, all prompts at once). bf16: the three passes and per request on vLLM, their
agreement, and for each prompt where they part whether it parted at a near-tie that bf16
cannot resolve (`bf16_agreement`). The JSON goes to outputs/bench/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from benchmarks.decode import parting_char, timed, timed_generate, top2_gap, window_gaps, with_dtype
from wsd.api import Generator
from wsd.backends.decoding import base_texts, encode
from wsd.backends.engines import ModelPool, load_engine
from wsd.backends.models import ModelSpec
from wsd.baselines.nudging import Nudging
from wsd.core.prompts import pilot_prompt
from wsd.data.prompt_sets import load_benchmark
from wsd.methods import compose, method_entry
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.method import wsd_settings
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.per_request import PerRequestWSD
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.switch import WSDSettings, first_switch

OLD_BATCH = 8  # what every method handed vLLM per call until ae0907d (generation.batch_size)


def config(args, scheduling: str) -> dict:
    cfg = compose([f"pilot={args.pilot}", f"base={args.base}", "backend=vllm", f"backend.scheduling={scheduling}",
                   "benchmark=alpaca_eval", f"benchmark.limit={args.prompts}", "logger=none", "draft_cache_dir=null",
                   f"generation.max_new_tokens={args.length}", "generation.fixed_length=true",
                   f"generation.chunk_tokens={args.chunk}", f"wsd.draft_max_tokens={args.draft}",
                   f"wsd.window={args.window}", f"wsd.threshold={args.threshold}"])
    return OmegaConf.to_container(cfg, resolve=True)


def pair(pool: ModelPool, r: dict, dtype: str = "float32"):
    return tuple(pool.engine(with_dtype(r[role], dtype), r["backend"], r["model_cache_dir"])
                 for role in ("pilot", "base"))


def warm(pilot, base, prompts) -> None:
    """Engine start-up and first-use costs, outside every timing."""
    ids = encode(base.tokenizer, base_texts(base, prompts[0].messages)[0])
    pilot.generate([encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, prompts[0].messages))], [2], [])
    base.generate([ids], [2], [])
    base.score([ids], [len(ids) - 4])


def same(a: dict, b: dict) -> int:
    """How many prompts got the same answer (and, for WSD, the same switch) in both runs."""
    return sum((a[k].get("keep_count"), a[k]["response"]) == (b[k].get("keep_count"), b[k]["response"]) for k in a)


def served(args, console, generator: Generator, prompts, clients: int) -> dict:
    """`clients` concurrent clients over the prompts, each asking the next when answered."""
    import httpx

    from wsd.serving.in_thread import InThread
    from wsd.serving.openai_api import create_app

    queue = list(prompts)
    latencies, answers = [], {}

    def client(http: httpx.Client, url: str) -> None:
        while True:
            try:
                prompt = queue.pop(0)
            except IndexError:
                return
            started = time.perf_counter()
            body = http.post(f"{url}/chat/completions", json={"model": "wsd", "messages": prompt.messages,
                                                              "max_tokens": args.length}).json()
            latencies.append(time.perf_counter() - started)
            answers[prompt.id] = {"keep_count": body["wsd"]["keep_count"],
                                  "response": body["choices"][0]["message"]["content"]}

    workers = generator.cfg["backend"]["max_in_flight"]  # as pipelines.serve sets it on the async engine
    with InThread(create_app(generator, "wsd", None, max_batch=256, batch_wait_s=0.005, workers=workers)) as server, \
            httpx.Client(timeout=3600, limits=httpx.Limits(max_connections=clients)) as http:
        for engine in generator.engines().values():
            engine.reset_prefix_cache()
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as threads:
            list(threads.map(lambda _: client(http, server.url), range(clients)))
        wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=20)
    result = {"clients": clients, "seconds": wall, "tokens_per_s": len(prompts) * args.length / wall,
              "p50_s": statistics.median(latencies), "p95_s": q[18], "answers": answers}
    console.print(f"  served, {clients:2d} clients: {wall:.1f} s, {result['tokens_per_s']:.1f} tokens/s, "
                  f"p50 {result['p50_s']:.1f} s, p95 {result['p95_s']:.1f} s")
    return result


def run(args) -> dict:
    console = Console()
    console.width = max(console.width, 140)
    batched_cfg, per_request_cfg = config(args, "batched"), config(args, "per_request")
    prompts = load_benchmark(batched_cfg["benchmark"])
    N, L = len(prompts), args.length
    settings = WSDSettings(args.window, args.threshold, args.draft, L, fixed_length=True)
    console.print(f"[bold]{N} AlpacaEval prompts x {L} tokens, draft {args.draft}, chunk {args.chunk}, "
                  f"w={args.window}, gamma={args.threshold}, fp32, {torch.get_num_threads()} threads")
    seconds, records = {}, {}

    pool = ModelPool()
    vpilot, vbase = pair(pool, batched_cfg)
    warm(vpilot, vbase, prompts)
    base_ids = [encode(vbase.tokenizer, base_texts(vbase, p.messages)[0]) for p in prompts]
    seconds["base only, all at once"] = timed_generate(vbase, base_ids, L)
    offline = {
        "three passes, all at once": ReferenceWSD(vpilot, vbase, settings, batch_size=N),
        f"WSD chunked, batches of {OLD_BATCH} (before)":
            ChunkedWSD(vpilot, vbase, settings, FastOptions(batch_size=OLD_BATCH, chunk_tokens=args.chunk)),
        "WSD chunked, all at once": ChunkedWSD(vpilot, vbase, settings, FastOptions(batch_size=N, chunk_tokens=args.chunk)),
    }
    for name, method in offline.items():
        seconds[name], records[name] = timed(method, prompts, vpilot, vbase)
        console.print(f"  {name}: {seconds[name]:.1f} s")
    stage = stage_setting(args, console, vpilot, vbase) if args.stage_repeats else None
    nudged = prompts[: args.nudging_prompts]
    nudging = {}
    nudging["vLLM, one prompt at a time"] = timed(nudger(args, vpilot, vbase), nudged, vpilot, vbase)
    nudging["vLLM, all prompts in lockstep"] = timed(nudger(args, vpilot, vbase, batch_size=len(nudged)), nudged,
                                                     vpilot, vbase)
    for engine in (vpilot, vbase):
        engine.close()

    pool = ModelPool()
    apilot, abase = pair(pool, per_request_cfg)
    warm(apilot, abase, prompts)
    name = "WSD per request, all submitted"
    per_request = PerRequestWSD(apilot, abase, settings, FastOptions(chunk_tokens=args.chunk), max_in_flight=N)
    seconds[name], records[name] = timed(per_request, prompts, apilot, abase)
    console.print(f"  {name}: {seconds[name]:.1f} s")
    nudging["vLLM per request, all submitted"] = timed(nudger(args, apilot, abase, len(nudged)), nudged, apilot, abase)
    generator = Generator(per_request_cfg, pool)
    serving = [served(args, console, generator, prompts, c) for c in args.clients]
    for c in serving:
        seconds[f"served per request, {c['clients']} clients"] = c["seconds"]
    for engine in (apilot, abase):
        engine.close()
    hpilot, hbase = (load_engine(ModelSpec.from_config(per_request_cfg[role]), {"name": "hf"},
                                 per_request_cfg["model_cache_dir"]) for role in ("pilot", "base"))
    nudging["HF, one prompt at a time"] = timed(nudger(args, hpilot, hbase), nudged, hpilot, hbase)
    nudging_table = nudging_report(console, nudging, len(nudged), L)

    old = f"WSD chunked, batches of {OLD_BATCH} (before)"
    table = Table(title=f"{N} prompts x {L} tokens on vLLM (fp32, CPU): tokens/s side by side")
    for col in ("method", "wall s", "tokens/s", f"/ {old}", "p50 s", "p95 s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    latency = {f"served per request, {c['clients']} clients": c for c in serving}
    for key, s in seconds.items():
        lat = latency.get(key, {})
        table.add_row(key, f"{s:.1f}", f"{N * L / s:.1f}", f"{s / seconds[old]:.3f}",
                      f"{lat['p50_s']:.1f}" if lat else "", f"{lat['p95_s']:.1f}" if lat else "")
    console.print(table)
    equivalence = {f"per request == {old}": [same(records[name], records[old]), N],
                   "per request == three passes": [same(records[name], records["three passes, all at once"]), N],
                   f"{old} == three passes": [same(records[old], records["three passes, all at once"]), N]}
    equivalence.update({f"served {c['clients']} clients == per request offline":
                        [same(c["answers"], records[name]), N] for c in serving})
    for key, (agree, n) in equivalence.items():
        console.print(f"  {key}: {agree} of {n}")
    top = max(serving, key=lambda c: c["clients"])
    targets = {f"served {top['clients']} clients / offline per request (tokens/s)":
                   (seconds[name] / top["seconds"], ">= 0.9"),
               f"offline per request / {old} (time)": (seconds[name] / seconds[old], "<= 1"),
               "offline per request / three passes all at once (time)":
                   (seconds[name] / seconds["three passes, all at once"], "< 1")}
    for key, (value, target) in targets.items():
        console.print(f"  {key} = {value:.3f} (target {target})")
    bf16 = bf16_agreement(args, console, prompts, settings, (hpilot, hbase)) if args.bf16 else None
    return {"settings": vars(args), "seconds": seconds, "equivalence": equivalence,
            "served": [{k: v for k, v in c.items() if k != "answers"} for c in serving],
            "targets": {k: {"value": v, "target": t} for k, (v, t) in targets.items()},
            "per_request_requests": per_request.counter, "nudging": nudging_table, "bf16": bf16, "stage": stage}


def stage_setting(args, console, pilot, base) -> dict:
    """The generate stage's own methods on the `make reproduce` setting (`experiment=mini`:
    AlpacaEval prompts, 192-token answers with their real stops, 96-token drafts), built by the
    registry on these engines, side by side and repeated: each method as `backend=vllm` ran it
    until ae0907d (8 prompts per call) and as it runs now (every prompt at once), and WSD's
    chunked path all at once beside the three passes (its default on vLLM); same records?"""
    def cfg(method: str, *overrides: str) -> dict:
        return OmegaConf.to_container(compose(["experiment=mini", f"benchmark.limit={args.prompts}", "logger=none",
                                               "draft_cache_dir=null", f"method={method}", *overrides]), resolve=True)

    engines = {"pilot": pilot, "base": base}
    _, settings, options = wsd_settings(cfg("wsd"))  # every prompt at once, early stop: the chunked path as it was

    def built(method: str, *overrides: str):
        return lambda: method_entry(method).build(cfg(method, *overrides), engines)

    runs = {f"WSD chunked, batches of {OLD_BATCH} (until ae0907d)":
                lambda: ChunkedWSD(pilot, base, settings, dataclasses.replace(options, batch_size=OLD_BATCH)),
            "WSD chunked, all at once": lambda: ChunkedWSD(pilot, base, settings, options),
            "WSD three passes, all at once (default)": built("wsd"),
            **{f"{m}, {how}": built(m, *([f"backend.max_in_flight={OLD_BATCH}"] if how.startswith("batches") else []))
               for m in ("base", "pilot") for how in (f"batches of {OLD_BATCH}", "all at once")}}
    prompts = load_benchmark(cfg("base")["benchmark"])
    seconds, records = {}, {}
    console.print(f"[bold]the generate stage's setting: {len(prompts)} prompts, experiment=mini, "
                  f"{args.stage_repeats} repeats")
    for _ in range(args.stage_repeats):
        for name, make in runs.items():
            took, records[name] = timed(make(), prompts, pilot, base)
            seconds.setdefault(name, []).append(took)
            console.print(f"  {name}: {took:.1f} s")
    pairs = [(f"WSD chunked, batches of {OLD_BATCH} (until ae0907d)", "WSD three passes, all at once (default)"),
             ("WSD chunked, all at once", "WSD three passes, all at once (default)"),
             *((f"{m}, batches of {OLD_BATCH}", f"{m}, all at once") for m in ("base", "pilot"))]
    table = Table(title=f"the generate stage's setting on vLLM (fp32, CPU), {len(prompts)} prompts: wall s per repeat")
    for col in ("before", "s", "now", "s", "now / before (median)", "same records"):
        table.add_column(col, justify="left" if col in ("before", "now") else "right")
    out = []
    for before, now in pairs:
        ratio = statistics.median(seconds[now]) / statistics.median(seconds[before])
        agree = same(records[now], records[before])
        table.add_row(before, " / ".join(f"{x:.1f}" for x in seconds[before]), now,
                      " / ".join(f"{x:.1f}" for x in seconds[now]), f"{ratio:.3f}", f"{agree} of {len(prompts)}")
        out.append({"before": before, "now": now, "ratio": ratio, "same": [agree, len(prompts)]})
    console.print(table)
    return {"seconds": seconds, "pairs": out}


def nudger(args, pilot, base, max_in_flight: int | None = None, batch_size: int = 1) -> Nudging:
    return Nudging(pilot, base, args.length, True, threshold=args.nudging_threshold, max_in_flight=max_in_flight,
                   batch_size=batch_size)


def nudging_report(console, runs: dict, n: int, length: int) -> dict:
    """Nudging's three ways side by side: seconds, tokens/s, time against HF, same records."""
    hf_seconds, hf_records = runs["HF, one prompt at a time"]
    keys = ("response", "handovers", "pilot_words")
    table = Table(title=f"nudging, {n} prompts x {length} tokens (fp32, CPU)")
    for col in ("path", "wall s", "tokens/s", "/ HF (time)", "records == HF", "handovers"):
        table.add_column(col, justify="left" if col == "path" else "right")
    out = {}
    for name, (sec, recs) in runs.items():
        agree = sum([recs[k][f] for f in keys] == [hf_records[k][f] for f in keys] for k in recs)
        handovers = sum(r["handovers"] for r in recs.values())
        out[name] = {"seconds": sec, "tokens_per_s": n * length / sec, "time_vs_hf": sec / hf_seconds,
                     "same_as_hf": [agree, n], "handovers": handovers}
        table.add_row(name, f"{sec:.1f}", f"{n * length / sec:.1f}", f"{sec / hf_seconds:.3f}", f"{agree} of {n}",
                      str(handovers))
    console.print(table)
    return out


def bf16_resolution(fp32_model, bf16_model, sequences: list[list[int]]) -> dict:
    """How far bf16 moves a model's numbers on these sequences: at every position, its top-2
    logit gap (the fp32 top two) and the log-probability of the next token, bf16 against fp32.
    The 99th percentiles are bf16's resolution here: a choice nearer than that is decided by
    rounding, and any change of batch, chunking or cache can decide it the other way."""
    gaps, log_probs = [], []
    with torch.inference_mode():
        for ids in sequences:
            x = torch.tensor([ids])
            l32, l16 = (m.model(x).logits[0].float() for m in (fp32_model, bf16_model))
            top = l32.topk(2, dim=-1).indices
            g32, g16 = l32.gather(1, top), l16.gather(1, top)
            gaps += ((g16[:, 0] - g16[:, 1]) - (g32[:, 0] - g32[:, 1])).abs().tolist()
            after = x[0, 1:].unsqueeze(1)
            lp32, lp16 = (lg.log_softmax(-1)[:-1].gather(1, after) for lg in (l32, l16))
            log_probs += (lp16 - lp32).abs().squeeze(1).tolist()
    q = lambda xs: statistics.quantiles(xs, n=100)[98]  # noqa: E731
    return {"logit_gap": q(gaps), "log_prob": q(log_probs), "positions": len(gaps)}


def bf16_agreement(args, console, prompts, settings: WSDSettings, fp32_pair) -> dict:
    """The three passes and WSD per request, both on vLLM in bf16 with every prompt at once:
    how often they agree, and where they part whether bf16 could resolve the step that parted
    them: a window score nearer the threshold than bf16's log-probability resolution (the
    switch), or a top-2 logit gap of the pilot or the base below bf16's logit-gap resolution
    where the responses part (the fp32 models measure the gap)."""
    N = len(prompts)
    batched_cfg, per_request_cfg = config(args, "batched"), config(args, "per_request")
    console.print("[bold]bf16 on vLLM: the three passes against per request, all prompts at once")
    pool = ModelPool()
    vpilot, vbase = pair(pool, batched_cfg, "bfloat16")
    warm(vpilot, vbase, prompts)
    three_s, three = timed(ReferenceWSD(vpilot, vbase, settings, batch_size=N), prompts, vpilot, vbase)
    for engine in (vpilot, vbase):
        engine.close()
    pool = ModelPool()
    apilot, abase = pair(pool, per_request_cfg, "bfloat16")
    warm(apilot, abase, prompts)
    per_s, per = timed(PerRequestWSD(apilot, abase, settings, FastOptions(chunk_tokens=args.chunk), max_in_flight=N),
                       prompts, apilot, abase)
    for engine in (apilot, abase):
        engine.close()
    cache = per_request_cfg["model_cache_dir"]
    bf16_pair = [load_engine(with_dtype(per_request_cfg[role], "bfloat16"), {"name": "hf"}, cache)
                 for role in ("pilot", "base")]
    texts = {"pilot": lambda m: pilot_prompt(fp32_pair[0].tokenizer, m),
             "base": lambda m: base_texts(fp32_pair[1], m)[0]}
    resolution = {}
    for role, fp32_model, bf16_model in zip(("pilot", "base"), fp32_pair, bf16_pair):
        sequences = [encode(fp32_model.tokenizer, texts[role](p.messages) + three[p.id]["response"]) for p in prompts]
        resolution[role] = bf16_resolution(fp32_model, bf16_model, sequences)
    differ = []
    for p in prompts:
        a, b = three[p.id], per[p.id]
        if (a["keep_count"], a["response"]) == (b["keep_count"], b["response"]):
            continue
        n = min(len(a["base_token_probs"]), len(b["base_token_probs"]))
        window = min(window_gaps(a["base_token_probs"][:n], settings) + window_gaps(b["base_token_probs"][:n], settings),
                     default=None)
        at = parting_char(a["response"], b["response"])
        gaps = {role: top2_gap(model, encode(model.tokenizer, texts[role](p.messages) + a["response"][:at]))
                for role, model in zip(("pilot", "base"), fp32_pair)}
        ties = {"switch": window is not None and window < resolution["base"]["log_prob"],
                **{role: gaps[role] < resolution[role]["logit_gap"] for role in gaps}}
        differ.append({"id": p.id, "keep_count": [a["keep_count"], b["keep_count"]],
                       "switch": [first_switch(r["base_token_probs"], settings.window, settings.threshold)
                                  for r in (a, b)],
                       "min_window_score_gap_log": window, "top2_logit_gap_at_parting": gaps,
                       "responses_part_at_char": at, "near_tie": ties, "explained": any(ties.values())})
    agree, explained = N - len(differ), sum(d["explained"] for d in differ)
    console.print(f"  three passes {three_s:.1f} s, per request {per_s:.1f} s (per request / three passes = "
                  f"{per_s / three_s:.3f}); agree on {agree} of {N}; of the {len(differ)} that part, {explained} "
                  f"at a near-tie bf16 cannot resolve (resolution: pilot logit gap "
                  f"{resolution['pilot']['logit_gap']:.3f}, base logit gap {resolution['base']['logit_gap']:.3f}, "
                  f"base log-prob {resolution['base']['log_prob']:.4f})")
    for d in differ:
        console.print(f"    {d['id']}: k {d['keep_count']}, window gap {d['min_window_score_gap_log']}, "
                      f"logit gaps {d['top2_logit_gap_at_parting']}, near-tie {d['near_tie']}")
    return {"seconds": {"three passes, all at once": three_s, "WSD per request, all submitted": per_s},
            "agree": [agree, N], "explained": [explained, len(differ)], "resolution": resolution, "differ": differ}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", default="smollm2_135m_instruct")
    parser.add_argument("--base", default="gemma3_270m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="L: output tokens per prompt")
    parser.add_argument("--draft", type=int, default=64, help="pilot draft budget")
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--chunk", type=int, default=16, help="draft tokens per chunk")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--nudging-prompts", type=int, default=8, help="nudging's prompts (HF takes ~20 s each)")
    parser.add_argument("--nudging-threshold", type=float, default=0.4)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 agreement run")
    parser.add_argument("--stage-repeats", type=int, default=2,
                        help="repeats of the generate stage's setting (experiment=mini, --prompts prompts); 0 skips it")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scheduling-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
