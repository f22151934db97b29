"""Packed batches (several sequences per row, attention kept inside each) equal padded ones: rewards, loss and
gradients to 1e-5 in fp32, for decoders through transformers' packed-sequence mask (SDPA) and rayrm's varlen
attention, and for BERT encoders (bidirectional attention per sequence, the pooler at each [CLS]) through the latter."""

import numpy as np
import pytest
import torch

from conftest import MINILM, TINY_QWEN3
from rayrm.batching import pack_sequences, pad_batch
from rayrm.losses import bradley_terry_loss
from rayrm.model import (can_pack, compute_rewards, disable_dropout, load_reward_model, load_tokenizer, packed_rewards,
                         use_varlen_attention)


def _seqs(n: int, seed: int, lo: int = 1, hi: int = 60) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 1000, int(k)).tolist() for k in rng.integers(lo, hi, n)]


def _assert_same_rewards_and_grads(rewards, grads) -> None:
    """Two forwards' rewards (r0, r1) and parameter gradients agree to 1e-5; the rewards are not all equal."""
    r0, r1 = rewards
    assert r0.std() > 0 and torch.allclose(r0, r1, atol=1e-5), (r0 - r1).abs().max()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), (n, (grads[0][n] - grads[1][n]).abs().max())


def test_pack_sequences_layout():
    seqs = _seqs(11, 0) + [[7]]  # a one-token sequence too
    p = pack_sequences(seqs, pad_id=0)
    ids, pos, last, cu = p["input_ids"], p["position_ids"], p["last"], p["cu_seq_lens"]
    longest = max(map(len, seqs))
    assert ids.shape[1] == longest and ids.shape[0] < len(seqs)  # rows no longer than the longest; some shared
    flat_ids, flat_pos = ids.reshape(-1), pos.reshape(-1)
    for s, end in zip(seqs, last.tolist()):
        start = end - len(s) + 1
        assert flat_ids[start : end + 1].tolist() == s  # each sequence whole, once, where `last` says
        assert flat_pos[start : end + 1].tolist() == list(range(len(s)))  # positions restart per sequence
    real = sum(map(len, seqs))
    assert int(p["seq_len"].sum()) == real and cu[-1] == ids.numel() and bool((cu[1:] > cu[:-1]).all())
    assert int(p["max_length"]) == longest
    one = pack_sequences(seqs, pad_id=0, one_row=True)  # the varlen layout: one row, no padding at all
    assert one["input_ids"].shape == (1, real) and len(one["cu_seq_lens"]) == len(seqs) + 1


@pytest.mark.parametrize("model_name,attention", [(TINY_QWEN3, "sdpa"), (TINY_QWEN3, "varlen"), (MINILM, "varlen")],
                         ids=["decoder-sdpa", "decoder-varlen", "bert-varlen"])
def test_packed_equals_padded_rewards_loss_and_gradients(model_name, attention):
    tok = load_tokenizer(MINILM)
    seqs = _seqs(12, 1)  # 6 pairs: rows [0, 6) chosen, [6, 12) rejected
    if model_name == MINILM:
        seqs = [[tok.cls_token_id] + s[:-1] + [tok.sep_token_id] if len(s) > 1 else [tok.cls_token_id] for s in seqs]
    grads, values = [], []
    for packed in (False, True):
        model = load_reward_model(model_name, tok, seed=4)
        assert can_pack(model)
        disable_dropout(model)  # MiniLM's dropout would differ between the two forwards
        if attention == "varlen":
            use_varlen_attention(model)
        model.train()
        if packed:
            p = pack_sequences(seqs, tok.pad_token_id, one_row=attention == "varlen")
            r = packed_rewards(model, p["input_ids"], p["position_ids"], p["last"], p["cu_seq_lens"], p["max_length"],
                               p["seq_len"])
        else:
            r = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "right"))
        loss = bradley_terry_loss(r[:6], r[6:])
        loss.backward()
        values.append((r.detach(), loss.detach()))
        grads.append({n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None})
    (r0, l0), (r1, l1) = values
    assert torch.allclose(l0, l1, atol=1e-5)
    _assert_same_rewards_and_grads((r0, r1), grads)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_bert_rewards_with_the_last_layer_at_cls_equal_the_full_forward(attention):
    # compute_rewards reads a BERT encoder's last layer at [CLS] only; the model's own forward computes every token
    tok = load_tokenizer(MINILM)
    seqs = [[tok.cls_token_id] + s + [tok.sep_token_id] for s in _seqs(8, 6)]
    ids, mask = pad_batch(seqs, tok.pad_token_id, "right")
    assert bool((mask == 0).any())  # padding present: the keys' mask matters
    grads, values = [], []
    for full in (True, False):
        model = load_reward_model(MINILM, tok, seed=7)
        disable_dropout(model)
        if attention == "varlen":
            use_varlen_attention(model)
        else:
            model.set_attn_implementation(attention)
        model.train()
        r = model(input_ids=ids, attention_mask=mask).logits[:, 0] if full else compute_rewards(model, ids, mask)
        bradley_terry_loss(r[:4], r[4:]).backward()
        values.append(r.detach())
        grads.append({n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None})
    _assert_same_rewards_and_grads(values, grads)


def test_packed_rows_do_not_see_each_other():
    # the same sequence packed beside different neighbours gives the same reward; without the restarting
    # positions (one long sequence) it would not
    tok = load_tokenizer(MINILM)
    model = load_reward_model(TINY_QWEN3, tok, seed=5).eval()
    target = _seqs(1, 2, 20, 21)[0]
    with torch.no_grad():
        alone = compute_rewards(model, torch.tensor([target]), torch.ones(1, len(target), dtype=torch.long))[0]
        for seed in (3, 4):
            seqs = [target] + _seqs(5, seed)
            p = pack_sequences(seqs, tok.pad_token_id, one_row=True)
            assert p["input_ids"].shape[0] == 1
            r = packed_rewards(model, p["input_ids"], p["position_ids"], p["last"])
            assert torch.allclose(r[0], alone, atol=1e-5)
            glued = packed_rewards(model, p["input_ids"], torch.arange(p["input_ids"].shape[1])[None], p["last"])
            assert not torch.allclose(glued[1:], r[1:], atol=1e-3)  # one causal sequence: later ones see earlier


def test_packed_bert_sequences_do_not_see_each_other():
    # bidirectional attention: a sequence packed beside different neighbours (before and after it) gives the reward
    # it has alone; the same row without the segments (one long sequence) does not
    tok = load_tokenizer(MINILM)
    model = load_reward_model(MINILM, tok, seed=5).eval()
    use_varlen_attention(model)
    target = [tok.cls_token_id] + _seqs(1, 2, 20, 21)[0] + [tok.sep_token_id]
    with torch.no_grad():
        alone = compute_rewards(model, torch.tensor([target]), torch.ones(1, len(target), dtype=torch.long))[0]
        for seed in (3, 4):
            seqs = [[tok.cls_token_id] + s + [tok.sep_token_id] for s in _seqs(4, seed)]
            seqs = seqs[:2] + [target] + seqs[2:]
            p = pack_sequences(seqs, tok.pad_token_id, one_row=True)
            r = packed_rewards(model, p["input_ids"], p["position_ids"], p["last"], p["cu_seq_lens"], p["max_length"],
                               p["seq_len"])
            assert torch.allclose(r[2], alone, atol=1e-5), (r[2], alone)
            whole = torch.tensor([0, p["input_ids"].shape[1]], dtype=torch.int32)
            glued = packed_rewards(model, p["input_ids"], p["position_ids"], p["last"], whole, None, p["seq_len"])
            assert not torch.allclose(glued, r, atol=1e-3)  # one segment: every token sees its neighbours


def test_train_packing_resolution():
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    from rayrm.config import ConfigError, TrainConfig, load_config
    from rayrm.train.engine import packing

    tok = load_tokenizer(MINILM)
    bert, decoder = load_reward_model(MINILM, tok), load_reward_model(TINY_QWEN3, tok)
    roberta = AutoModelForSequenceClassification.from_config(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1))
    assert not can_pack(roberta)

    def cfg(*over: str) -> TrainConfig:
        return load_config(None, [f"model={MINILM}", *over], TrainConfig)

    for model in (bert, decoder):  # on a CPU, auto and on pack a micro-batch into one row
        assert packing(cfg(), model) == packing(cfg("train.packing=on"), model) == "row"
        assert packing(cfg("train.packing=off"), model) == "off"
    assert packing(cfg(), roberta) == "off"  # auto: an encoder whose head packed_rewards does not reproduce
    with pytest.raises(ConfigError, match="train.packing=on packs decoders and BERT"):
        packing(cfg("train.packing=on"), roberta)
    assert packing(cfg("task=orm"), bert) == "off"  # token-level tasks stay padded
    with pytest.raises(ConfigError, match="scalar reward models"):
        packing(cfg("task=orm", "train.packing=on"), bert)
