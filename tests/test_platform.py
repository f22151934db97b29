"""Operating rayrm as a platform: the cluster launcher config and KubeRay manifest validate, the working dir that
`ray job submit --working-dir .` uploads stays small, a training job submitted with the real CLI to a real
`ray start --head` cluster succeeds, and jobs survive losing a node (`ray.cluster_utils.Cluster`, in subprocesses).

The Ray clusters started here are private to each test: own ports, own temp dir, own token, no RAY_ADDRESS
inherited, and they are stopped through the processes that started them (never a bare `ray stop`, which would kill
every Ray process on the machine, the session cluster of tests/conftest.py included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import HH, ROOT

RAY_CLI = str(Path(sys.executable).with_name("ray"))


# ---------------------------------------------------------------- cluster.yaml and KubeRay (no cluster needed)
def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg = prepare_config(raw)  # fills defaults the schema requires (validate alone reports a missing field)
    validate_config(cfg)  # raises on any schema violation
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0  # a CPU head
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(0 == t["min_workers"] < t["max_workers"] for t in gpu_types)  # GPU workers autoscale
    assert sum(t["max_workers"] for t in gpu_types) <= cfg["max_workers"]
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==2.13.0" in c)
    rayrm_at = next(i for i, c in enumerate(setup) if "pip install" in c and "-e ." in c)
    assert torch_at < rayrm_at, "torch must be installed (pinned) before rayrm, or pip resolves another build"
    assert any(dst.endswith("rayrm") and src == "." for dst, src in cfg["file_mounts"].items())  # the working dir
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
               if c.strip().startswith(("RAY_AUTH_MODE", "ray start")))
    text = (ROOT / "cluster.yaml").read_text()
    for job in ("jobs/train.py", "jobs/score.py", "jobs/serve.py", "serve run configs/serve/", "jobs/monitor.py"):
        assert job in text, f"cluster.yaml should say how to launch {job}"


# the fields KubeRay (ray.io/v1) defines; a typo would be dropped silently by a lenient apply
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
CLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                "headServiceAnnotations", "suspend", "authOptions", "managedBy", "gcsFaultToleranceOptions"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
                "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def test_kuberay_rayjob_manifest():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kuberay/rayjob-train.yaml").read_text()))
    (job,) = [d for d in docs if d and d.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["entrypoint"].startswith("python jobs/train.py --config configs/train/")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= CLUSTER_SPEC, set(cluster) - CLUSTER_SPEC
    assert cluster["rayVersion"] == "2.60.0" and cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    head_res = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_res and head["rayStartParams"]["num-gpus"] == "0"  # a CPU head
    for g in cluster["workerGroupSpecs"]:
        assert set(g) <= WORKER_GROUP and {"groupName", "minReplicas", "maxReplicas", "template"} <= set(g)
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # the image the manifest runs installs torch before rayrm
    docker = (ROOT / "deploy/kuberay/Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0" in docker
    assert docker.index("torch==2.13.0") < docker.index("pip install --no-cache-dir -e .")


def test_job_working_dir_upload_is_small_and_has_no_git():
    """What `ray job submit --working-dir .` packs (Ray's own packer: .gitignore + .rayignore apply)."""
    from ray._private.runtime_env.packaging import _zip_files

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pkg.zip")
        _zip_files(str(ROOT), [], out, include_gitignore=True)
        names = zipfile.ZipFile(out).namelist()
        size = os.path.getsize(out)
    assert "jobs/train.py" in names and "rayrm/train/loop.py" in names and "configs/train/default.yaml" in names
    assert not [n for n in names if n.startswith((".git/", "runs/")) or "__pycache__" in n]
    assert size < 10 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB: add big files to .rayignore"


# ---------------------------------------------------------------- a private `ray start --head` cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _start_head(env: dict, num_cpus: int, timeout_s: float) -> tuple[subprocess.Popen, str, str]:
    """One `ray start --head --block` attempt -> (process, dashboard address, temp dir), once the node is up."""
    temp_dir = tempfile.mkdtemp(prefix="rayrm-head-")  # short: Ray's unix socket paths must stay < 108 chars
    dash = _free_port()
    # Every port explicit: no clash with other clusters on this machine (Ray's defaults 10001, 52365 are fixed).
    cmd = [RAY_CLI, "start", "--head", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
           f"--port={_free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--temp-dir={temp_dir}", "--include-dashboard=true",
           "--disable-usage-stats"]
    log_path = os.path.join(temp_dir, "ray-start.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        if "block forever" in Path(log_path).read_text():  # printed once the node has fully started
            try:
                _get(f"http://127.0.0.1:{dash}/api/version", env["RAY_AUTH_TOKEN"])
                return proc, f"http://127.0.0.1:{dash}", temp_dir
            except OSError:
                pass
        if time.time() > deadline:
            _stop_head(proc)
            raise TimeoutError(f"ray start not up after {timeout_s}s:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(1)


def _stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block`: it kills what it started. Survivors die by the PIDs recorded before."""
    import psutil

    owned = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    _, alive = psutil.wait_procs(owned, timeout=15)
    for p in alive:  # only processes this cluster started
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout_s: float = 300, attempts: int = 2) -> Iterator[dict]:
    """A private `ray start --head` cluster: free ports, own temp dir and token, no RAY_* of the caller's cluster.

    `--block` keeps the starting process in the foreground as the owner of everything it launched, so stopping it
    stops this cluster and nothing else on the machine. A start that fails is retried once: Ray 2.60's raylet aborts
    when its dashboard agent has not published its ports within ~15 s (`WaitForDashboardAgentPorts`, not
    configurable), which a loaded 2-core machine can miss; the retry finds the agent's imports in the page cache.
    """
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token = generate_new_authentication_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS of another cluster
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for attempt in range(attempts):
        try:
            proc, address, temp_dir = _start_head(env, num_cpus, timeout_s)
            break
        except (RuntimeError, TimeoutError):
            if attempt == attempts - 1:
                raise
    try:
        yield {"address": address, "env": env, "token": token, "temp_dir": temp_dir}
    finally:
        _stop_head(proc)


@pytest.mark.slow
@pytest.mark.integration
def test_ray_job_submit_trains_and_exports(tmp_path):
    """The training job submitted to a `ray start` cluster; what the user reads is the job's output as `ray job
    submit` tails it: each progress line once, no Ray worker logs or Ray Data notices, and a closing summary with
    the export and the score/serve commands for it."""
    out = tmp_path / "out"
    sub_id = f"rayrm-ci-{os.getpid()}-{int(time.time())}"
    with ray_head() as head:
        cmd = [RAY_CLI, "job", "submit", "--address", head["address"], "--submission-id", sub_id,
               "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1"}}),
               "--", sys.executable, "jobs/train.py", "--config", "configs/train/default.yaml",
               f"name=ci-{sub_id}", f"output_dir={out}", f"data.path={HH}", "data.max_pairs=64",
               "data.max_length=64", "scaling.num_workers=1", "train.eval_every=2", "train.checkpoint_every=0",
               "train.log_every=1"]
        r = subprocess.run(cmd, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=1200)
        info = _get(f"{head['address']}/api/jobs/{sub_id}", head["token"])
        assert info["status"] == "SUCCEEDED", f"{info['status']}: {info.get('message')}\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
        assert r.returncode == 0
    meta = json.loads((out / "final" / "rayrm.json").read_text())
    assert meta["data"]["train_pairs"] + meta["data"]["eval_pairs"] == 64
    assert (out / "final" / "model.safetensors").exists()
    lines = r.stdout.splitlines()
    steps = [ln for ln in lines if re.match(r"\[rayrm\] step \d+/\d+ loss", ln)]
    total = int(re.search(r"step \d+/(\d+)", steps[0]).group(1))
    assert len(steps) == total == len(set(steps)) == meta["metrics"]["step"], steps  # every step exactly once
    assert all(" pairs/s ETA " in ln for ln in steps)
    assert sum(ln.startswith("[rayrm] step 2 held-out") for ln in lines) == 1
    noise = [ln for ln in lines + r.stderr.splitlines() if "(RayTrainWorker" in ln or "(TrainController" in ln
             or "(SplitCoordinator" in ln or "Starting execution of Dataset" in ln or "core_worker.cc" in ln]
    assert not noise, noise[:5]
    export = out / "final"
    assert f"export: {export}" in r.stdout and re.search(r"held-out \(\d+ rows\): .*accuracy", r.stdout)
    assert f"rayrm score --config configs/score/default.yaml model={export} " in r.stdout
    assert f"rayrm serve --config configs/serve/default.yaml model={export}" in r.stdout
    assert f"accuracy {meta['metrics']['eval_accuracy']:.4g}" in r.stdout  # the summary shows the exported metrics


# ---------------------------------------------------------------- node loss (multi-node cluster in a subprocess)
def _run_scenario(name: str, tmp_path: Path, attempts: int = 3) -> dict:
    """Run `tests/node_loss.py <name>` in its own process group with its own Ray temp dir; return its JSON result.

    The scenario's `Cluster` lives and dies with that process (and the group is killed afterwards, which reaches
    only processes it started). A cluster that fails to *start* (Ray's startup deadlines on a loaded machine) is
    retried; any other failure fails the test with the scenario's output.
    """
    for attempt in range(attempts):
        work = tmp_path / f"{name}-{attempt}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_TMPDIR=tempfile.mkdtemp(prefix="rrm-nl-"),  # own address file and sessions, short socket paths
                   RAY_raylet_start_wait_time_s="120",  # raylet -> GCS registration (default 10 s) on a loaded box
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "tests/node_loss.py", name, str(work)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=1500)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this scenario's cluster, nothing else
        results = [line for line in out.splitlines() if line.startswith("NODE_LOSS_RESULT ")]
        if proc.returncode == 0 and results:
            return json.loads(results[-1][len("NODE_LOSS_RESULT "):])
        if "timed out during startup" in out and attempt < attempts - 1:
            continue
        pytest.fail(f"node_loss.py {name} exited {proc.returncode}:\n{out[-6000:]}")
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.integration
def test_node_lost_mid_training_resumes_from_checkpoint_and_completes(tmp_path):
    res = _run_scenario("train", tmp_path)
    ev, m = res["events"], res["metrics"]
    assert "error" not in ev, ev.get("error")
    assert len(ev["busy_nodes_before"]) == 2  # the two training workers ran on two different nodes
    assert ev["removed_node"] in ev["busy_nodes_before"] and len(ev["at_removal"]) >= 1  # killed after a checkpoint
    assert m["restarts"] >= 1  # the worker group restarted after the node died, from the checkpoint ...
    assert m["step"] == res["export_step"] == 18  # ... and finished every step (144 pairs / 2 workers / 4 per step)
    assert m["eval_num_pairs"] == 16 and m["eval_accuracy"] == m["eval_accuracy"]  # evaluated, not NaN


@pytest.mark.slow
@pytest.mark.integration
def test_node_lost_mid_scoring_scores_every_row_exactly_once(tmp_path):
    import pyarrow.parquet as pq

    res = _run_scenario("score", tmp_path)
    ev = res["events"]
    assert "error" not in ev, ev.get("error")
    assert ev["removed_node"] in ev["busy_nodes_before"]  # the node was scoring a block when it died ...
    assert ev["at_removal"]["success"] is False  # ... before the job finished
    assert ev["actor_restarts"] >= 1 and ev["removed_node"] not in ev["actor_nodes_after"]  # the actor moved
    ids = pq.read_table(os.path.join(res["output"], "rewards"), columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == res["input_rows"]  # nothing twice ...
    assert sorted(ids) == [f"r{i:05d}" for i in range(res["input_rows"])]  # ... nothing lost
    assert res["summary"]["input_rows"] == res["input_rows"]
    assert os.path.exists(os.path.join(res["output"], "_SUCCESS.json"))
