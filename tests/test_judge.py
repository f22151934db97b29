"""Generative judge: order debiasing, batch invariance, and the Ray Data job, on a tiny causal LM from a config."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import MINILM, ROOT, TINY_QWEN3
from rayrm.judge import Judge


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge(TINY_QWEN3, tokenizer=MINILM, max_length=96)  # seed 0, like the job's actors


def test_both_orders_cancel_position_bias(judge, hh_rows):
    rows = hh_rows[:6]
    p_ab = judge.judge([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    p_ba = judge.judge([r["prompt"] for r in rows], [r["rejected"] for r in rows], [r["chosen"] for r in rows])
    np.testing.assert_allclose(p_ab, 1 - p_ba, atol=1e-6)  # swapping the responses flips the probability exactly
    assert ((p_ab > 0) & (p_ab < 1)).all() and p_ab.std() > 0
    same = judge.judge(["q"], ["same answer"], ["same answer"])
    assert abs(float(same[0]) - 0.5) < 1e-6  # identical responses: no preference, whatever the position bias


def test_p_a_better_equals_plain_next_token_logits(judge, hh_rows):
    # by hand: the judging text in each order, one plain transformers forward each, softmax over the logits of the
    # " A" and " B" tokens at the last position; P(a better) = mean of P("A" | a first) and P("B" | b first)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rayrm.judge import DEFAULT_TEMPLATE
    from rayrm.model import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
    torch.manual_seed(0)  # the Judge's seed for a config-only model: the same random weights
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_QWEN3)).eval()
    a_id, b_id = (tok(v, add_special_tokens=False)["input_ids"][0] for v in (" A", " B"))

    def p_first(prompt: str, x: str, y: str) -> float:
        ids = tok(DEFAULT_TEMPLATE.format(prompt=prompt, a=x, b=y), add_special_tokens=False)["input_ids"][-96:]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return float(torch.softmax(logits[[a_id, b_id]], 0)[0])

    rows = hh_rows[:5]
    want = np.array([(p_first(r["prompt"], r["chosen"], r["rejected"]) + 1 - p_first(r["prompt"], r["rejected"],
                      r["chosen"])) / 2 for r in rows])
    got = judge.judge([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert np.abs(want - 0.5).max() > 1e-3  # the check can tell a swapped verdict (1 - p) from the right one
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_judging_does_not_depend_on_batching(judge, hh_rows):
    rows = hh_rows[:7]
    args = ([r["prompt"][-200:] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    np.testing.assert_allclose(judge.judge(*args, batch_size=7), judge.judge(*args, batch_size=1), atol=1e-5)


def test_verdicts_must_be_single_distinct_tokens():
    with pytest.raises(ValueError, match="must be one token"):
        Judge(TINY_QWEN3, tokenizer=MINILM, verdicts=(" A", " unbelievably long verdict"))


@pytest.mark.integration
def test_judge_job_on_ray_data(ray_cluster, judge, hh_rows, tmp_path):
    from rayrm.config import JudgeConfig, load_config
    from rayrm.judge import run_judging

    inp = tmp_path / "pairs.jsonl"
    rows = [{"prompt": r["prompt"][-200:], "chosen": r["chosen"], "rejected": r["rejected"], "k": i} for i, r in enumerate(hh_rows[:10])]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(ROOT / "configs/judge/default.yaml", [f"model={TINY_QWEN3}", f"tokenizer={MINILM}", f"input={inp}",
                      f"output={tmp_path / 'out'}", "max_length=96", "block_rows=4"], JudgeConfig)
    summary = run_judging(cfg)
    out = pd.read_parquet(tmp_path / "out").sort_values("k")
    assert summary["pairs"] == len(out) == 10 and list(out["k"]) == list(range(10))  # every pair, columns kept
    direct = judge.judge([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    np.testing.assert_allclose(out["p_a_better"].to_numpy(), direct, atol=1e-5)
    assert list(out["verdict"]) == ["A" if p >= 0.5 else "B" for p in direct]
