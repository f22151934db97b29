"""End-to-end training on a real local Ray cluster: Ray Train + DeepSpeed (gloo, CPU) on a tiny Qwen3."""

import json
import os
import signal
import time

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import MINILM, TINY_QWEN3, assert_same_tokenised_rows
from faults import ExitAfterCheckpoint
from rayrm.config import TrainConfig, load_config
from rayrm.batching import pad_batch
from rayrm.data import read_preferences, render_row, special_layout, split_rows, tokenize_pairs
from rayrm.errors import UserError
from rayrm.metrics import pairwise_accuracy, reward_stats
from rayrm.train import run_training

pytestmark = pytest.mark.integration


def _cfg(tmp_path, data_path, *overrides) -> TrainConfig:
    base = [
        f"name=t{abs(hash(overrides)) % 10**8}",
        f"output_dir={tmp_path}",
        f"model={TINY_QWEN3}",
        f"tokenizer={MINILM}",
        f"data.path={data_path}",
        "data.max_length=64",
        "data.eval_fraction=0.125",
        "train.micro_batch_size=8",
        "train.eval_batch_size=4",
        "optim.lr=1e-3",
        "train.log_every=1",
    ]
    return load_config(None, base + list(overrides), TrainConfig)


def _plain_eval_rewards(export: str, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out rewards computed with plain transformers only (no rayrm model code), one pair at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    rows, _ = read_preferences(cfg.data.path)
    _, held = split_rows(rows, cfg.data.eval_fraction, cfg.data.seed)
    texts = [render_row(r, tok) for r in held]
    lay = special_layout(tok)
    c_ids, r_ids, _ = tokenize_pairs(
        [t["prompt"] for t in texts], [t["chosen"] for t in texts], [t["rejected"] for t in texts],
        tok, cfg.data.max_length, lay,
    )
    out = []
    for ids in (c_ids, r_ids):
        with torch.no_grad():
            out.append(torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0] for s in ids]))
    return out[0], out[1]


def _check_export(export: str, cfg: TrainConfig, metrics: dict) -> None:
    for f in ("config.json", "model.safetensors", "tokenizer_config.json", "rayrm.json"):
        assert os.path.exists(os.path.join(export, f)), f
    meta = json.load(open(os.path.join(export, "rayrm.json")))
    assert meta["max_length"] == 64 and meta["loss"] == "bradley_terry" and meta["padding_side"] == cfg.padding_side
    assert meta["reward_readout"] == "last_non_pad_token" and meta["task"] == "reward"
    # the fitted temperature is no worse than T = 1 on the pairs it was fitted on (log loss of sigmoid(d / T))
    r_c, r_r = _plain_eval_rewards(export, cfg)
    d = (r_c - r_r).double()
    nll = lambda t: float(torch.nn.functional.softplus(-d / t).mean())  # noqa: E731
    # fitted, not the T = 1 fallback: no temperature on a fine log grid (1e-3..1e3, as the fit's bounds) does better
    grid = torch.logspace(-3, 3, 2401, dtype=torch.float64)
    best = min(nll(float(t)) for t in grid)
    assert meta["temperature"] > 0 and nll(meta["temperature"]) <= best + 1e-6
    # pairs/s is over the loop's own time, split into data, forward, backward and optimizer shares that add up
    shares = [metrics[f"train_share_{k}"] for k in ("data", "forward", "backward", "optimizer")]
    assert metrics["train_pairs_per_s"] > 0 and all(x > 0 for x in shares) and abs(sum(shares) - 1) < 1e-6
    # the loop's wall span (first step's start to last step's end) holds the phases and the progress between steps
    assert metrics["train_loop_wall_s"] >= metrics["train_loop_s"] > 0
    # the worker process's CPU seconds over that span (evaluations and checkpoints between steps included): seconds,
    # so no more than every core for the whole span
    assert 0 < metrics["train_loop_cpu_s"] <= metrics["train_loop_wall_s"] * os.cpu_count()
    assert metrics["train_loop_minor_faults"] > 0 and metrics["train_loop_preemptions"] >= 0
    assert meta["precision"] == "fp32"  # deepspeed.precision auto on a CPU (tests pin auto to fp32 in any case)
    report = json.load(open(os.path.join(export, "report", "eval_report.json")))  # end-of-training eval report
    assert report["num_pairs"] == metrics["eval_pairs"] and abs(report["accuracy"] - metrics["eval_accuracy"]) < 1e-6
    assert all(os.path.exists(os.path.join(export, "report", f)) for f in report["files"].values())
    r_c, r_r = _plain_eval_rewards(export, cfg)
    assert len(r_c) == metrics["eval_pairs"] == metrics["eval_num_pairs"]
    stats = reward_stats(torch.cat([r_c, r_r]))
    # the exported model, loaded with plain transformers, reproduces what rayrm measured during training
    assert abs(stats["mean"] - meta["reward_mean"]) < 1e-4 and abs(stats["std"] - meta["reward_std"]) < 1e-4
    assert abs(pairwise_accuracy(r_c, r_r) - metrics["eval_accuracy"]) < 1e-6
    # and padded batches in plain transformers give the same rewards as one row at a time
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    seqs = [tok("Human: hi\n\nAssistant: hello there")["input_ids"], tok("Human: yo\n\nAssistant: no")["input_ids"]]
    with torch.no_grad():
        batch = model(*pad_batch(seqs, tok.pad_token_id, "right")).logits[:, 0]
        alone = torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    assert torch.allclose(batch, alone, atol=1e-5)


def _gone_within(seconds: float, title: str) -> bool:
    """No process on this machine is titled `title` (Ray names an actor's process ray::<class>) within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        titles = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    titles.append(f.read().split(b"\0")[0].decode(errors="replace"))
            except OSError:
                pass  # the process ended meanwhile
        if not any(t.startswith(title) for t in titles):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def test_zero2_two_workers_trains_evaluates_and_exports(ray_cluster, tmp_path, hh_small):
    cfg = _cfg(tmp_path, hh_small, "deepspeed.zero_stage=2", "train.eval_every=2", "train.checkpoint_every=3")
    sigint = signal.getsignal(signal.SIGINT)
    m = run_training(cfg)
    # Ray Train's Ctrl-C handler is gone with its run, and so is the run's controller actor it held
    assert signal.getsignal(signal.SIGINT) is sigint
    assert _gone_within(30, "ray::TrainController")
    assert m["train_pairs"] == 84 and m["eval_pairs"] == 12 and m["skipped_rows"] == 0
    assert m["step"] == 6  # 42 pairs per worker / 8 per micro-batch -> 6 optimizer steps
    for k in ("eval_loss", "eval_accuracy", "eval_margin", "eval_ece", "eval_reward_mean", "eval_reward_std"):
        assert k in m and m[k] == m[k]  # present and not NaN
    assert m["truncated_train"] > 0  # 400-char prompts + replies exceed 64 tokens: counted, not dropped
    _check_export(os.path.join(tmp_path, "final"), cfg, m)
    tb = os.path.join(tmp_path, "tensorboard", cfg.name)  # rank 0's TensorBoard scalars
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb))


@pytest.mark.slow
def test_zero3_two_workers(ray_cluster, tmp_path, hh_small):
    cfg = _cfg(tmp_path, hh_small, "deepspeed.zero_stage=3", "padding_side=left")
    m = run_training(cfg)
    assert m["step"] == 6 and m["restarts"] == 0
    _check_export(os.path.join(tmp_path, "final"), cfg, m)


@pytest.mark.slow
def test_worker_failure_resumes_from_checkpoint(ray_cluster, tmp_path, hh_small):
    cfg = _cfg(tmp_path, hh_small, "train.checkpoint_every=2", "train.max_failures=1")
    m = run_training(cfg, on_checkpoint=ExitAfterCheckpoint(step=2))
    assert m["restarts"] == 1  # one worker died after the step-2 checkpoint; the group restarted from it
    assert m["step"] == 6  # and finished every step
    _check_export(os.path.join(tmp_path, "final"), cfg, m)


def test_a_different_config_in_the_same_run_dir_is_refused(tmp_path):
    from rayrm.train.driver import _guard_run_dir

    run_dir = str(tmp_path / "run")
    base = {"model": "m", "data": {"max_length": 64}, "train": {"lr": 1, "log_every": 10}, "output_dir": "x"}
    _guard_run_dir(run_dir, base)
    _guard_run_dir(run_dir, {**base, "train": {"lr": 1, "log_every": 1}, "output_dir": "y"})  # same run: resumes
    with pytest.raises(UserError, match="different config"):
        _guard_run_dir(run_dir, {**base, "data": {"max_length": 128}})


@pytest.fixture(scope="module")
def hh_ranked(tmp_path_factory, hh_rows) -> str:
    """Ranked rows (K = 2..4) from HH: chosen ranked 1st, rejected 2nd, then replies to other prompts."""
    path = tmp_path_factory.mktemp("ranked") / "hh_ranked.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(hh_rows[:64]):
            k = 2 + i % 3
            others = [hh_rows[(i + 7 * j) % 200]["chosen"] for j in range(1, k - 1)]
            comps = [r["rejected"], *others, r["chosen"]]  # stored out of order; the ranking puts chosen first
            ranking = [2, *range(3, k + 1), 1]
            f.write(json.dumps({"prompt": r["prompt"][-300:], "completions": comps, "ranking": ranking}) + "\n")
    return str(path)


def test_driver_and_actor_tokenisation_agree(ray_cluster, tmp_path, hh_ranked, monkeypatch):
    cfg = _cfg(tmp_path, hh_ranked, "train.loss=plackett_luce", "data.max_length=48", "scaling.num_workers=2")
    assert_same_tokenised_rows(cfg, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["plackett_luce", "grouped_pairs"])
def test_ranked_losses_train_on_k_wise_rows(ray_cluster, tmp_path, hh_ranked, loss):
    from rayrm.train import prepare_datasets

    cfg = _cfg(tmp_path, hh_ranked, f"train.loss={loss}", "data.eval_fraction=0.25", "train.micro_batch_size=4")
    # a ranked row is one dataset row: sharding and batching cannot split it
    datasets, facts = prepare_datasets(cfg)
    ks = sorted(len(x) for x in datasets["train"]["lens"])  # tokenised on the driver: numpy columns
    assert ks.count(2) + ks.count(3) + ks.count(4) == len(ks) == facts["train_pairs"] == 48
    m = run_training(cfg)
    rows, _ = read_preferences(hh_ranked)
    _, held = split_rows(rows, 0.25, 0)
    # every ordered pair of every held-out ranking is evaluated once: sum of C(K, 2)
    assert m["eval_num_pairs"] == sum(len(r["completions"]) * (len(r["completions"]) - 1) // 2 for r in held)
    assert m["step"] == 6 and m["train_loss"] == m["train_loss"]  # 24 groups per worker / 4 -> 6 steps; not NaN


def test_ingest_options_keep_order_and_log_no_deprecation():
    # Ray's DataConfig.default_ingest_options() sets the deprecated exclude_resources: a warning in every run
    import warnings

    from ray.train import DataConfig

    from rayrm.train.driver import ingest_options

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*exclude_resources")
        opts = ingest_options()
        DataConfig(execution_options=opts)
    assert opts.preserve_order and opts.resource_limits == DataConfig.default_ingest_options().resource_limits


def test_max_train_pairs_cuts_the_training_split_only(tmp_path, hh_small):
    from rayrm.train import prepare_datasets

    full, facts_full = prepare_datasets(_cfg(tmp_path, hh_small, "scaling.num_workers=1"))
    cut, facts_cut = prepare_datasets(_cfg(tmp_path, hh_small, "scaling.num_workers=1", "data.max_train_pairs=10"))
    assert facts_full["train_pairs"] == 84 and facts_cut["train_pairs"] == 10
    assert facts_cut["eval_pairs"] == facts_full["eval_pairs"] == 12  # the same held-out pairs
    ids = lambda part, name: [x.tolist() for x in part[name]["ids"]]  # noqa: E731
    assert ids(cut, "eval") == ids(full, "eval") and ids(cut, "train") == ids(full, "train")[:10]
