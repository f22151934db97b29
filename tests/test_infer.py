"""Inference core (no Ray): token-budget batching and batch-invariant rewards for decoder and encoder exports."""

import numpy as np
import pytest
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


def test_max_padding_cuts_a_batch_before_padding_passes_its_share():
    lengths = [100, 98, 60, 59, 58, 10]
    # no limit: one batch padded to 100 (615 of 600 slots... 385 of 600 are padding)
    assert [b.tolist() for b in token_budget_batches(lengths, 10_000, 64)] == [[0, 1, 2, 3, 4, 5]]
    # 5%: 100 and 98 (1% padding) go together; 60/59/58 (1.7%); 10 alone
    assert [b.tolist() for b in token_budget_batches(lengths, 10_000, 64, max_padding=0.05)] == [[0, 1], [2, 3, 4], [5]]
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 512, size=500)
    for share in (0.0, 0.05, 0.3):
        batches = token_budget_batches(lengths, 16384, 64, max_padding=share)
        assert sorted(np.concatenate(batches).tolist()) == list(range(500))
        for b in batches:
            padded = len(b) * lengths[b].max()
            assert padded - lengths[b].sum() <= share * padded + 1e-9 and padded <= max(16384, lengths[b].max())


def test_scorer_limits_padding_on_cpu_only_by_default(tiny_export):
    assert RewardScorer(tiny_export).max_padding == 0.05  # CPU: a padded token costs as much as a real one
    assert RewardScorer(tiny_export, max_padding=None).max_padding is None


def _check_batch_invariance(export: str, rollouts: list[dict], packing: str = "off") -> None:
    # padded batches (not the CPU default), or packed rows
    scorer = RewardScorer(export, token_budget=4096, max_padding=None, packing=packing)
    assert scorer.packing == ("off" if packing == "off" else "rows")
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


def test_packed_decoder_scoring_equals_each_row_alone(tiny_export, rollouts):
    _check_batch_invariance(tiny_export, rollouts, packing="on")


def test_packing_auto_and_encoders(tiny_export, minilm_export):
    assert RewardScorer(tiny_export).packing == "off"  # auto: packing measured slower on CPUs
    assert RewardScorer(minilm_export, packing="auto").packing == "off"
    with pytest.raises(ValueError, match="packing=on needs a decoder"):
        RewardScorer(minilm_export, packing="on")


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
