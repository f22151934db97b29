"""Inference core (no Ray): token-budget batching and batch-invariant rewards for decoder and encoder exports."""

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from rayrm.batching import token_budget_batches
from rayrm.infer import RewardScorer


def test_token_budget_batches_cover_every_row_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = token_budget_batches(lengths, token_budget=2048, max_rows=64)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for b in batches:
        assert len(b) <= 64 and (len(b) == 1 or len(b) * lengths[b].max() <= 2048)
    # sorted by length: a batch's rows are no longer than the previous batch's
    assert all(lengths[batches[i]].min() >= lengths[batches[i + 1]].max() for i in range(len(batches) - 1))


def test_a_row_longer_than_the_budget_goes_alone():
    assert [b.tolist() for b in token_budget_batches([10, 500, 20], token_budget=100, max_rows=8)] == [[1], [2, 0]]


def _check_batch_invariance(export: str, rollouts: list[dict]) -> None:
    scorer = RewardScorer(export, token_budget=4096)
    prompts = [r["prompt"] for r in rollouts[:24]]
    comps = [r["completion"] for r in rollouts[:24]]
    batched = scorer.score(prompts, comps)
    ids = scorer.tokenize(prompts, comps).ids
    # each row alone through plain transformers (no rayrm read-out code, no padding)
    plain = AutoModelForSequenceClassification.from_pretrained(export).eval()
    with torch.no_grad():
        alone = np.array([plain(input_ids=torch.tensor([s])).logits[0, 0].item() for s in ids], dtype=np.float32)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert batched.std() > 0  # rewards differ: not a constant read-out


def test_decoder_rewards_do_not_depend_on_batching(tiny_export, rollouts):
    _check_batch_invariance(tiny_export, rollouts)


def test_encoder_rewards_do_not_depend_on_batching(minilm_export, rollouts):
    _check_batch_invariance(minilm_export, rollouts)


def test_messages_render_like_prompt_completion_text(tiny_export):
    scorer = RewardScorer(tiny_export)
    msgs = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"}]
    a = scorer.score([msgs[:1]], [msgs[1:]])
    b = scorer.score(["\n\nUser: hi there\n\nAssistant:"], [" hello!"])  # the plain fallback (no chat template)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_normalize_uses_the_stored_stats(tiny_export):
    scorer = RewardScorer(tiny_export)
    scorer.reward_mean, scorer.reward_std = 2.0, 4.0
    np.testing.assert_allclose(scorer.normalize(np.array([2.0, 6.0, -2.0])), [0.0, 1.0, -1.0])
    scorer.reward_std = 0.0  # zero-std guard
    np.testing.assert_allclose(scorer.normalize(np.array([3.0])), [1.0])
