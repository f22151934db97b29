"""Node-loss scenarios on a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`), one per process.

    python tests/node_loss.py train <workdir>    # workers on two nodes; one dies after the first registered checkpoint
    python tests/node_loss.py score <workdir>    # the node of the scoring actor dies while it scores a block

tests/test_platform.py runs these as subprocesses: each builds its own cluster (own temp dir via RAY_TMPDIR, so no
address file of another cluster is read or overwritten) and the pytest process keeps its session cluster. The
stdout line starting with `NODE_LOSS_RESULT ` carries the JSON result; the cluster is shut down before exit.

Nodes are sized so the placement is forced, not lucky. Training: every node (3 CPUs) fits exactly one worker
(2.5 CPUs), so the two workers span two nodes, at least one of them a worker node (the victim), and the third node
is the spare the restarted group moves to. Scoring: the 1-CPU head (driver, reading, tokenising, writing) cannot
hold the 2-CPU scoring actor, so it runs on a worker node; the other node is the spare, as an autoscaler would
provide. Three nodes, not more: every node starts Python agents, and on a loaded 2-core machine a raylet aborts
when its agents miss its (fixed) startup deadline.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from conftest import HH, MINILM, TINY_QWEN3  # noqa: E402  (sets HF_HUB_OFFLINE too)


def _actor_nodes(address: str, class_fragment: str) -> list[str]:
    """Nodes of the live actors whose class name contains `class_fragment`. The address is explicit: with several
    clusters on the machine, the state API would otherwise pick one by itself."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    return sorted({a.node_id for a in actors if class_fragment in a.class_name})


def _running_task_nodes(address: str, name_fragment: str, suffix: str) -> list[str]:
    """Nodes running a task whose name contains `name_fragment` and ends with `suffix` (Ray Data's actor pool runs
    blocks as `MapWorker(MapBatches(ScoreActor)).submit` tasks)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=address, filters=[("state", "=", "RUNNING")], limit=1000)
    return sorted({t.node_id for t in tasks if name_fragment in (t.name or "") and (t.name or "").endswith(suffix)})


def _kill_node_when(cluster: Any, busy_nodes: Any, ready: Any, events: dict[str, Any], timeout_s: float,
                    delay_s: float = 0.0, snapshot: Any = None) -> None:
    """Background thread: once `ready()` holds (and `delay_s` later), hard-kill (no graceful shutdown) a worker node
    among `busy_nodes()`, the nodes doing the work; what it saw, and `snapshot()` of the job's output just before the
    kill, go into `events`."""
    try:
        deadline = time.time() + timeout_s
        while not ready():
            if time.time() > deadline:
                events["error"] = "the trigger never fired"
                return
            time.sleep(0.2)
        time.sleep(delay_s)
        busy = busy_nodes()
        for _ in range(50):  # the work may sit between two tasks at this instant: look again for up to 10 s
            if busy:
                break
            time.sleep(0.2)
            busy = busy_nodes()
        events["busy_nodes_before"] = busy
        victims = [n for n in cluster.worker_nodes if n.node_id in set(busy)]
        if not victims:
            events["error"] = f"no worker node among the busy nodes {busy}"
            return
        victim = victims[0]
        events["at_removal"] = snapshot() if snapshot else None
        events["removed_node"] = victim.node_id
        events["removed_at"] = time.time()
        cluster.remove_node(victim, allow_graceful=False)
    except Exception:
        events["error"] = traceback.format_exc()


CLUSTERS: list[Any] = []  # for the explicit teardown in __main__
RESULT = "NODE_LOSS_RESULT "  # prefix of the result line (Ray's forwarded worker logs share stdout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(head: bool) -> dict[str, int]:
    """Explicit ports for a node: no clash with other clusters on the machine (8265, 52365 are Ray's fixed defaults)."""
    ports = {"metrics_agent_port": _free_port(), "metrics_export_port": _free_port(),
             "runtime_env_agent_port": _free_port(), "dashboard_agent_listen_port": _free_port()}
    if head:
        ports["dashboard_port"] = _free_port()
    return ports


def _cluster(head_cpus: int, worker_cpus: list[int]) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "object_store_memory": 300 * 2**20,
                                                            "include_dashboard": True, **_ports(head=True)})
    for n in worker_cpus:
        cluster.add_node(num_cpus=n, object_store_memory=200 * 2**20, **_ports(head=False))
    ray.init(address=cluster.address, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    CLUSTERS.append(cluster)
    return cluster


# ---------------------------------------------------------------- scenario (a): training
def scenario_train(workdir: str) -> dict[str, Any]:
    from rayrm.config import TrainConfig, load_config
    from rayrm.train import run_training

    cluster = _cluster(3, [3, 3])  # each node fits one 2.5-CPU worker: the two span two nodes, one node is spare
    out = os.path.join(workdir, "train")
    cfg = load_config(None, [
        "name=node-loss", f"output_dir={out}", f"model={TINY_QWEN3}", f"tokenizer={MINILM}", f"data.path={HH}",
        "data.max_pairs=160", "data.max_length=96", "data.eval_fraction=0.1", "scaling.num_workers=2",
        "scaling.cpus_per_worker=2.5", "scaling.torch_threads=1", "deepspeed.zero_stage=2",
        "train.micro_batch_size=4", "train.eval_batch_size=16", "train.checkpoint_every=3", "train.max_failures=2",
        "train.log_every=3", "optim.lr=1e-3",
    ], TrainConfig)
    snapshot = os.path.join(out, "ray", cfg.name, "checkpoint_manager_snapshot.json")

    def committed() -> list[str]:
        """Checkpoints the Train controller has registered (a `checkpoint_*` dir alone is not enough: the controller
        collects reports on a poll, and a checkpoint written but not yet registered is not resumed from)."""
        try:
            with open(snapshot) as f:
                return [c["checkpoint_dir_name"] for c in json.load(f)["checkpoint_results"]]
        except (OSError, ValueError, KeyError):
            return []

    events: dict[str, Any] = {}
    killer = threading.Thread(target=_kill_node_when, daemon=True, args=(
        cluster, lambda: _actor_nodes(cluster.address, "RayTrainWorker"), lambda: bool(committed()), events, 900,
        0.0, committed))
    killer.start()
    try:
        metrics = run_training(cfg)
    finally:
        killer.join(timeout=5)
    meta = json.load(open(os.path.join(out, "final", "rayrm.json")))
    return {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "events": events,
            "export_step": meta["metrics"]["step"], "checkpoints": committed()}


# ---------------------------------------------------------------- scenario (b): scoring
def scenario_score(workdir: str) -> dict[str, Any]:
    from ray.util.state import list_actors

    from rayrm.config import ScoreConfig, load_config
    from rayrm.model import export_base_model
    from rayrm.score import SUCCESS, run_scoring, shard_files

    # the 1-CPU head cannot hold the 2-CPU scoring actor: it runs on a worker node; the other one is the spare
    cluster = _cluster(1, [2, 2])
    # MiniLM (22M params): slow enough on CPU that the node dies while rows are still being scored
    model = export_base_model(MINILM, os.path.join(workdir, "model"), 128, seed=4)
    inp = os.path.join(workdir, "rollouts.jsonl")
    n = 0
    with open(HH) as f, open(inp, "w") as g:
        for i, line in zip(range(300), f):
            r = json.loads(line)
            for k in ("chosen", "rejected"):
                g.write(json.dumps({"id": f"r{n:05d}", "prompt": r["prompt"][-600:], "completion": r[k]}) + "\n")
                n += 1
    out = os.path.join(workdir, "scored")
    cfg = load_config(None, [f"model={model}", f"input={inp}", f"output={out}", "num_actors=1", "cpus_per_actor=2",
                             "torch_threads=1", "block_rows=16", "token_budget=2048", "tokenize_cpus=0.5"], ScoreConfig)

    def scoring_nodes() -> list[str]:
        return _running_task_nodes(cluster.address, "ScoreActor", ".submit")

    def done_so_far() -> dict[str, Any]:
        return {"shards": len(shard_files(out)), "success": os.path.exists(os.path.join(out, SUCCESS))}

    events: dict[str, Any] = {}
    killer = threading.Thread(target=_kill_node_when, daemon=True, args=(
        cluster, scoring_nodes, lambda: bool(scoring_nodes()), events, 900, 3.0, done_so_far))
    killer.start()
    try:
        summary = run_scoring(cfg)
    finally:
        killer.join(timeout=5)
    events["shards_at_end"] = len(shard_files(out))
    actors = [a for a in list_actors(address=cluster.address, limit=1000, detail=True) if "ScoreActor" in a.class_name]
    events["actor_restarts"] = sum(a.num_restarts for a in actors)
    events["actor_nodes_after"] = sorted({a.node_id for a in actors})
    return {"summary": summary, "events": events, "input_rows": n, "output": out}


if __name__ == "__main__":
    scenario, workdir = sys.argv[1], sys.argv[2]
    os.makedirs(workdir, exist_ok=True)
    result = {"train": scenario_train, "score": scenario_score}[scenario](workdir)
    print(RESULT + json.dumps(result, default=str), flush=True)  # the verdict; teardown problems do not change it
    try:
        import ray

        ray.shutdown()
        for c in CLUSTERS:
            c.shutdown()
    except Exception:
        traceback.print_exc()
    sys.stderr.flush()
    os._exit(0)  # skip atexit hooks that would tear the (already stopped) cluster down a second time
