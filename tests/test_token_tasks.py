"""Outcome and process RMs: token labels, truncation, GSM8K corruption, and end-to-end training on Ray Train."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import MINILM, ROOT, TINY_QWEN3, assert_same_tokenised_rows
from rayrm.config import TrainConfig, load_config
from rayrm.data import BadRowError, special_layout
from rayrm.losses import IGNORE, step_ce_loss, token_bce_loss
from rayrm.metrics import aggregate_scores, roc_auc
from rayrm.model import load_tokenizer
from rayrm.token_tasks import (
    PRM_CLASSES,
    tokenize_outcome,
    tokenize_process,
    validate_outcome_row,
    validate_process_row,
)


def test_orm_labels_every_completion_token_and_masks_the_prompt():
    tok = load_tokenizer(MINILM)
    lay = special_layout(tok)
    ids, labels, cut = tokenize_outcome(["what is 2+2?"], [" it is 4"], [1.0], tok, 64, lay)
    n_c = len(tok(" it is 4", add_special_tokens=False)["input_ids"])
    assert labels[0] == [IGNORE] * (len(ids[0]) - n_c - 1) + [1] * n_c + [IGNORE]  # [CLS] prompt | completion | [SEP]
    # truncation cuts the prompt first: the completion keeps all its labels
    ids, labels, cut = tokenize_outcome(["word " * 50], [" it is 4"], [0.0], tok, 16, lay)
    assert cut == [True] and len(ids[0]) == 16 and labels[0].count(0) == n_c


def test_prm_labels_sit_on_step_boundaries_for_any_separator():
    tok = load_tokenizer(MINILM)  # BERT drops "\n": each step's boundary is then its own last token
    lay = special_layout(tok)
    steps = ["2 + 2 = 4", "4 * 3 = 12", "#### 12"]
    ids, labels, _ = tokenize_process(["Q: ?"], [steps], [[1, -1, 0]], tok, 64, lay, "\n")
    marked = [(i, lab) for i, lab in enumerate(labels[0]) if lab != IGNORE]
    assert [lab for _, lab in marked] == [PRM_CLASSES[1], PRM_CLASSES[-1], PRM_CLASSES[0]]
    for (pos, _), step in zip(marked, steps):
        assert ids[0][pos] == tok(step, add_special_tokens=False)["input_ids"][-1]
    ids2, labels2, _ = tokenize_process(["Q: ?"], [steps], [[1, -1, 0]], tok, 64, lay, " ;")  # a real separator token
    sep = tok(" ;", add_special_tokens=False)["input_ids"][-1]
    assert all(ids2[0][i] == sep for i, lab in enumerate(labels2[0]) if lab != IGNORE)


def test_token_losses_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    import math

    hand = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert abs(float(token_bce_loss(logits, labels)) - hand) < 1e-6
    assert abs(float(token_bce_loss(logits, labels, torch.tensor([0.0])))) < 1e-9  # filler rows count nothing
    three = torch.zeros(1, 2, 3)
    assert abs(float(step_ce_loss(three, torch.tensor([[2, IGNORE]]))) - math.log(3)) < 1e-6  # uniform -> ln 3


def test_auroc_and_aggregates_by_hand():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert roc_auc(torch.tensor([0.3, 0.3]), torch.tensor([0, 1])) == 0.5  # a tie counts one half
    v, m = torch.tensor([[0.5, 0.2, 0.9]]), torch.tensor([[True, True, True]])
    assert [round(float(aggregate_scores(v, m, h)[0]), 6) for h in ("mean", "min", "product", "last")] == [
        round(1.6 / 3, 6), 0.2, 0.09, 0.9]


def test_bad_orm_and_prm_rows_name_the_field():
    with pytest.raises(BadRowError, match="f.jsonl:line 3: field 'correct' must be 1/0"):
        validate_outcome_row({"prompt": "p", "completion": "c", "correct": "yes"}, "f.jsonl:line 3")
    with pytest.raises(BadRowError, match="field 'labels' must be a list with one label per step"):
        validate_process_row({"prompt": "p", "steps": ["a", "b"], "labels": [1]}, "f:line 1")
    with pytest.raises(BadRowError, match=r"field 'labels\[1\]' must be \+1, 0 or -1"):
        validate_process_row({"prompt": "p", "steps": ["a", "b"], "labels": [1, 2]}, "f:line 1")


def test_gsm8k_corruption_changes_one_step_and_the_answer(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/make_gsm8k_rm_data.py"), "--out", str(tmp_path),
                          "--limit", "50"], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    assert stats["problems"] == 50 and stats["corrupted_rows"] + stats["no_number_to_corrupt"] == 50
    prm = [json.loads(x) for x in open(tmp_path / "prm.jsonl")]
    orm = [json.loads(x) for x in open(tmp_path / "orm.jsonl")]
    assert len(prm) == len(orm) == 50 + stats["corrupted_rows"]
    for good, bad in zip(prm[::2], prm[1::2]):
        assert set(good["labels"]) == {1}
        i = bad["labels"].index(-1)
        assert good["steps"][:i] == bad["steps"][:i] and good["steps"][i] != bad["steps"][i]  # one line changed
        assert bad["labels"][i:] == [-1] * (len(bad["steps"]) - i) and bad["steps"][-1] != good["steps"][-1]
    assert sum(r["correct"] for r in orm) == 50


# ---------------------------------------------------------------- end to end on Ray Train + DeepSpeed
@pytest.fixture(scope="module")
def gsm8k_small(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("gsm8k")
    subprocess.run([sys.executable, str(ROOT / "scripts/make_gsm8k_rm_data.py"), "--out", str(out), "--limit", "48"],
                   check=True, capture_output=True)
    return str(out)


@pytest.mark.integration
def test_driver_and_actor_tokenisation_agree_on_prm_rows(ray_cluster, tmp_path, gsm8k_small, monkeypatch):
    cfg = load_config(None, ["task=prm", f"output_dir={tmp_path}", f"model={TINY_QWEN3}", f"tokenizer={MINILM}",
                             f"data.path={gsm8k_small}/prm.jsonl", "data.max_length=64", "scaling.num_workers=2"],
                      TrainConfig)
    assert_same_tokenised_rows(cfg, monkeypatch)


def _plain_token_metrics(export: str, path: str, task: str, max_length: int, eval_fraction: float) -> dict:
    """ORM/PRM held-out metrics by hand: the job's held-out split, tokenised as training does, a plain transformers
    forward one solution at a time; token (step) accuracy and loss over labelled positions, per solution the mean
    (ORM) / min (PRM) P(correct), AUROC by counting ordered (correct, incorrect) pairs, accuracy at 0.5."""
    import numpy as np
    from transformers import AutoModelForTokenClassification

    from rayrm.data import read_rows, split_rows
    from rayrm.token_tasks import TokenTaskTokenizer

    rows, _ = read_rows(path, validate_outcome_row if task == "orm" else validate_process_row)
    _, held = split_rows(rows, eval_fraction, 0)
    cols = {k: np.array([r[k] for r in held], dtype=object) for k in held[0]}
    tok = TokenTaskTokenizer(task, export, max_length)(cols)
    model = AutoModelForTokenClassification.from_pretrained(export).eval()
    right = total = 0
    nll = 0.0
    scores = []
    with torch.no_grad():
        for ids, labels in zip(tok["ids"], tok["labels"]):
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].double()  # (s, C)
            lab = torch.as_tensor(labels, dtype=torch.long)
            at = lab != IGNORE
            if task == "orm":
                p = torch.sigmoid(logits[:, 0])
                y = lab[at].double()
                nll += float(-(y * torch.log(p[at]) + (1 - y) * torch.log1p(-p[at])).sum())
                right += int(((p[at] > 0.5).long() == lab[at]).sum())
                scores.append(float(p[at].mean()))
            else:
                logp = torch.log_softmax(logits, -1)
                nll += float(-logp[at].gather(1, lab[at, None]).sum())
                right += int((logits[at].argmax(-1) == lab[at]).sum())
                scores.append(float(logp[at, PRM_CLASSES[1]].exp().min()))
            total += int(at.sum())
    target = [float(t) for t in tok["target"]]
    pos = [s for s, t in zip(scores, target) if t == 1]
    neg = [s for s, t in zip(scores, target) if t == 0]
    auroc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    return {"eval_loss": nll / total, "eval_token_accuracy": right / total, "eval_auroc": auroc,
            "eval_accuracy": sum((s >= 0.5) == (t == 1) for s, t in zip(scores, target)) / len(scores),
            "eval_score_mean": sum(scores) / len(scores)}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("task, extra", [("orm", []), ("prm", []), ("orm", ["lora.r=4", "lora.alpha=8"])],
                         ids=["orm", "prm", "orm-lora"])
def test_token_rm_trains_evaluates_and_exports(ray_cluster, tmp_path, gsm8k_small, task, extra):
    from transformers import AutoModelForTokenClassification

    from rayrm.train import run_training

    cfg = load_config(None, [
        f"name=tok-{task}", f"task={task}", f"output_dir={tmp_path}", f"model={TINY_QWEN3}", f"tokenizer={MINILM}",
        f"data.path={gsm8k_small}/{task}.jsonl", "data.max_length=96", "data.eval_fraction=0.25",
        "train.micro_batch_size=8", "train.eval_batch_size=8", "optim.lr=1e-3", "deepspeed.zero_stage=2", *extra,
    ], TrainConfig)
    m = run_training(cfg)
    assert m["train_pairs"] == 72 and m["eval_num_solutions"] == 24 and m["step"] == 5  # 36 rows/worker, 8 per step
    final = os.path.join(tmp_path, "final")
    # the held-out metrics, recomputed from the export with plain transformers on the same 24 held-out solutions
    plain = _plain_token_metrics(final, f"{gsm8k_small}/{task}.jsonl", task, 96, 0.25)
    for k in ("eval_loss", "eval_token_accuracy", "eval_auroc", "eval_accuracy", "eval_score_mean"):
        assert abs(m[k] - plain[k]) < 1e-4, (k, m[k], plain[k])
    meta = json.load(open(os.path.join(final, "rayrm.json")))
    assert meta["task"] == task and meta["aggregate"] == ("mean" if task == "orm" else "min")
    assert (meta["lora"] or {}).get("r") == (4 if extra else None)  # LoRA: merged into a plain token classifier
    model = AutoModelForTokenClassification.from_pretrained(final)
    assert model.config.num_labels == (1 if task == "orm" else 3)
    # scoring through the Ray Data job: per-token (ORM) / per-step (PRM) probabilities and their aggregate
    import numpy as np
    import pandas as pd

    from rayrm.config import ScoreConfig
    from rayrm.infer import RewardScorer
    from rayrm.score import run_scoring

    orm_rows = [json.loads(x) for x in open(os.path.join(gsm8k_small, "orm.jsonl"))][:12]
    inp = tmp_path / "rollouts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in orm_rows))
    summary = run_scoring(load_config(ROOT / "configs/score/default.yaml", [
        f"model={final}", f"input={inp}", f"output={tmp_path / 'scored'}", "block_rows=4"], ScoreConfig))
    assert summary["input_rows"] == 12
    out = pd.read_parquet(tmp_path / "scored/rewards").sort_values("id", key=lambda s: s.str.split(":").str[-1].astype(int))
    col = "token_scores" if task == "orm" else "step_scores"
    agg = {"mean": np.mean, "min": np.min}[meta["aggregate"]]
    for reward, scores, cut, r in zip(out["reward"], out[col], out["truncated"], orm_rows):
        assert len(scores) > 0 and abs(reward - agg(scores)) < 1e-5
        if task == "prm":  # one probability per step of the completion (steps cut off by max_length have none)
            n_steps = len([x for x in r["completion"].split("\n") if x.strip()])
            assert len(scores) == n_steps if not cut else 0 < len(scores) <= n_steps
    alone = RewardScorer(final).score([r["prompt"] for r in orm_rows], [r["completion"] for r in orm_rows])
    np.testing.assert_allclose(out["reward"].to_numpy(), alone, atol=1e-5)
