"""The per-worker training loop without Ray: it trains the tiny model in this process (a one-rank gloo group, no Ray),
and with the same seed gives the loss curve the Ray Train job gives with one worker."""

import functools
import glob
import math
import os
import struct

import numpy as np
import pytest
import torch

from conftest import MINILM, TINY_QWEN3
from rayrm.config import TrainConfig, load_config
from rayrm.train.engine import step_loss_for
from rayrm.train.local import train_local
from rayrm.train.loop import LoopStats

STEPS = 10


def _cfg(tmp_path, data_path) -> TrainConfig:
    return load_config(None, [
        f"name=loop{os.getpid()}", f"output_dir={tmp_path}", f"model={TINY_QWEN3}", f"tokenizer={MINILM}",
        f"data.path={data_path}", "data.max_length=64", "data.eval_fraction=0.125", "train.micro_batch_size=4",
        "train.eval_batch_size=4", "optim.lr=1e-3", "train.log_every=1", "scaling.num_workers=1",
    ], TrainConfig)


def _scalars(logdir: str, tag: str) -> dict[int, float]:
    """Scalars of one tag from TensorBoard event files (TFRecord: length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents*"))):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i: i + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[i + 12: i + 12 + n])
            i += 12 + n + 4
            out.update({ev.step: v.simple_value for v in ev.summary.value if v.tag == tag})
    return out


def _plain_curve(cfg: TrainConfig) -> tuple[list[float], LoopStats, dict, tuple[float, float]]:
    """Train in a fresh plain process (no Ray; a one-rank gloo group, which DeepSpeed keeps for the life of its
    process) -> (loss per step, stats, final state, (training-set loss before, after))."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_train_here, cfg).result(timeout=600)


def _train_set_loss(cfg: TrainConfig, engine, tok, buffers) -> float:
    from rayrm.train.engine import micro_batches

    loss = step_loss_for(cfg)
    with torch.no_grad():
        return float(np.mean([loss(engine, b, w).item() for b, w in micro_batches(buffers, cfg, tok, 0, engine.device)]))


def _train_here(cfg: TrainConfig) -> tuple[list[float], LoopStats, dict, tuple[float, float]]:
    return train_local(cfg, probe=functools.partial(_train_set_loss, cfg))


def test_loop_trains_in_a_plain_process(tmp_path, hh_small):
    cfg = _cfg(tmp_path, hh_small)
    curve, stats, state, (before, after) = _plain_curve(cfg)
    assert state["step"] == len(curve) == len(stats.losses) >= STEPS  # one micro-batch per optimizer step
    assert state["epoch"] == 1 and state["micro_step"] == 0
    assert sum(stats.sizes) == stats.rows == 84  # every training pair once (96 pairs, 12 held out)
    assert abs(sum(stats.shares().values()) - 1) < 1e-9 and stats.phase["backward"] > 0
    assert math.isclose(curve[0], math.log(2), abs_tol=0.05)  # a fresh head: r_c ~ r_r
    assert after < before - 0.01, (before, after)  # it learned the pairs it saw


@pytest.mark.slow
@pytest.mark.integration
def test_same_loss_curve_through_ray_train_with_one_worker(ray_cluster, tmp_path, hh_small):
    from rayrm.train import run_training

    cfg = _cfg(tmp_path / "ray", hh_small)
    m = run_training(cfg)
    ray_curve = _scalars(os.path.join(tmp_path, "ray", "tensorboard", cfg.name), "train/loss")
    plain, _, _, _ = _plain_curve(_cfg(tmp_path / "plain", hh_small))
    assert m["step"] == len(plain) and sorted(ray_curve) == list(range(1, len(plain) + 1))
    np.testing.assert_allclose([ray_curve[s] for s in range(1, STEPS + 1)], plain[:STEPS], rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", ["decoder", "bert"])
def test_packed_training_gives_the_padded_loss_curve(tmp_path, hh_small, model):
    # train.packing=on (one packed row per micro-batch, attention per sequence) against padded micro-batches: same
    # seed, the same loss at every step. One step's gradients agree to 1e-5 (tests/test_packing.py); over 21 AdamW
    # steps at lr 1e-3 their rounding differences grow to a few 1e-5 in the loss.
    cfg = _cfg(tmp_path, hh_small)
    if model == "bert":
        cfg = cfg.model_copy(update={"model": MINILM})
    padded, _, _, _ = _plain_curve(cfg.model_copy(update={"train": cfg.train.model_copy(update={"packing": "off"})}))
    packed, _, _, _ = _plain_curve(cfg.model_copy(update={"train": cfg.train.model_copy(update={"packing": "on"})}))
    assert len(packed) == len(padded) >= STEPS
    np.testing.assert_allclose(packed, padded, rtol=0, atol=1e-4)
    assert packed[-1] != packed[0]


def test_packing_on_a_token_task_is_a_config_error(tmp_path, hh_small):
    from rayrm.config import ConfigError
    from rayrm.train.engine import setup_engine

    cfg = load_config(None, [f"output_dir={tmp_path}", f"model={MINILM}", f"data.path={hh_small}", "task=orm",
                             "train.packing=on"], TrainConfig)
    with pytest.raises(ConfigError, match="train.packing=on is for scalar reward models"):
        setup_engine(cfg, 10)


def test_bf16_on_a_cpu_is_autocast_with_fp32_weights(tmp_path, hh_small):
    # deepspeed.precision=bf16 on a CPU (what auto picks with AMX): the forward runs under bf16 autocast, the weights,
    # optimizer and loss stay fp32; the curve follows the fp32 one within bf16 rounding, and is not the fp32 one
    cfg = _cfg(tmp_path, hh_small)
    def with_precision(p: str) -> TrainConfig:
        return cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"precision": p})})

    fp32, _, _, _ = _plain_curve(with_precision("fp32"))
    bf16, _, _, _ = _plain_curve(with_precision("bf16"))
    gap = np.abs(np.asarray(bf16) - np.asarray(fp32))
    assert len(bf16) == len(fp32) and np.isfinite(bf16).all()
    assert 0 < gap.max() < 0.05, gap


def test_cpu_bf16_is_autocast_not_deepspeed_bf16(tmp_path, hh_small):
    from rayrm.model import load_reward_model, load_tokenizer
    from rayrm.train.engine import RewardModule, deepspeed_config

    cfg = load_config(None, [f"output_dir={tmp_path}", f"data.path={hh_small}", "deepspeed.precision=bf16"],
                      TrainConfig)
    assert deepspeed_config(cfg)["bf16"]["enabled"] is False  # a CPU: fp32 weights, no DeepSpeed bf16 mode
    model = load_reward_model(TINY_QWEN3, load_tokenizer(MINILM), seed=1)
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ids = torch.randint(5, 1000, (2, 12))
    for autocast, inner in ((False, torch.float32), (True, torch.bfloat16)):
        r = RewardModule(model, 1, cpu_autocast=autocast)(ids, torch.ones_like(ids))
        assert seen[-1] == inner and r.dtype == torch.float32  # matmuls in bf16, rewards (and the loss) in fp32
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("overrides, stage", [
    (["scaling.num_workers=1", "deepspeed.zero_stage=2"], 0),  # one rank: nothing to partition
    (["scaling.num_workers=1", "deepspeed.zero_stage=1"], 0),
    (["scaling.num_workers=2", "deepspeed.zero_stage=2"], 2),
    (["scaling.num_workers=1", "deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"], 2),  # offload needs it
    (["scaling.num_workers=1", "deepspeed.zero_stage=3"], 3),  # ZeRO-3 keeps its own semantics (gathered save)
])
def test_one_worker_runs_zero_1_and_2_as_stage_0(overrides, stage):
    from rayrm.train.engine import deepspeed_config, zero_stage

    cfg = load_config(None, overrides, TrainConfig)
    assert zero_stage(cfg) == stage == deepspeed_config(cfg)["zero_optimization"]["stage"]


def test_the_loop_clock_starts_with_the_first_micro_batch_in_hand():
    # as a transformers Trainer callback's on_step_begin (after its first batch is fetched): starting the data stream
    # is reported as first_batch_s, not loop time. DeepSpeed's engine interface over a plain torch optimizer.
    import time

    from rayrm.train.loop import new_state, train_epochs

    class TorchEngine:
        def __init__(self) -> None:
            self.model = torch.nn.Linear(4, 1)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)

        def is_gradient_accumulation_boundary(self) -> bool:
            return True

        def backward(self, loss: torch.Tensor) -> None:
            loss.backward()

        def step(self) -> None:
            self.opt.step()
            self.opt.zero_grad()

    def batches(epoch: int):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:  # a slow, busy start of the data stream (CPU time before the loop)
            pass
        for _ in range(3):
            yield {"x": torch.randn(2, 4)}, torch.ones(2)

    state = new_state()
    stats = train_epochs(TorchEngine(), batches, lambda e, b, w: e.model(b["x"]).pow(2).mean(), state, 1)
    assert state["step"] == 3 and stats.rows == 6
    assert stats.first_batch_s >= 0.5 > stats.wall_seconds >= stats.seconds and stats.phase["data"] < 0.5
    # resource use over the same span: the CPU seconds of three tiny steps, not those of the busy start before them
    assert set(stats.usage) == {"cpu_s", "minor_faults", "preemptions"} and 0 <= stats.usage["cpu_s"] < 0.3
