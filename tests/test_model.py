"""Reward read-out: padding invariance, pad == EOS, encoder pooling, plain-transformers agreement."""

import torch
from transformers import AutoModelForSequenceClassification

from conftest import MINILM, TINY_QWEN3
from rayrm.batching import pad_batch
from rayrm.data import special_layout, tokenize_texts
from rayrm.model import (
    chunked_rewards,
    compute_rewards,
    disable_dropout,
    is_decoder,
    is_right_padded,
    load_reward_model,
    load_tokenizer,
)

PROMPTS = ["Human: what is two plus two?\n\nAssistant:", "Human: hi\n\nAssistant:", "Human: name a colour\n\nAssistant:"]
RESPONSES = [" four, obviously, and here is a long explanation of why", " hello", " blue"]


def _seqs(tok):
    ids, _ = tokenize_texts(PROMPTS, RESPONSES, tok, 64, special_layout(tok))
    return ids


def _alone(model, seqs):
    """Each sequence through the model on its own: no padding at all."""
    return torch.stack([compute_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])


def test_decoder_left_and_right_padding_agree():
    tok = load_tokenizer(MINILM)
    model = load_reward_model(TINY_QWEN3, tok, seed=1).eval()
    assert is_decoder(model)
    seqs = _seqs(tok)
    # right padding takes the mask-free causal path, left padding the masked one: both must equal no padding at all
    assert is_right_padded(pad_batch(seqs, tok.pad_token_id, "right")[1])
    assert not is_right_padded(pad_batch(seqs, tok.pad_token_id, "left")[1])
    with torch.no_grad():
        left = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "left"))
        right = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "right"))
        alone = _alone(model, seqs)
    assert torch.allclose(left, right, atol=1e-5), (left, right)
    assert torch.allclose(right, alone, atol=1e-5)
    assert left.std() > 0  # rewards differ between inputs: the read-out is not constant


def test_pad_equal_to_eos_still_reads_the_last_real_token():
    tok = load_tokenizer(MINILM)
    model = load_reward_model(TINY_QWEN3, tok, seed=2).eval()
    seqs = _seqs(tok)  # every sequence ends in EOS ([SEP])
    eos = tok.eos_token_id
    with torch.no_grad():
        alone = _alone(model, seqs)
        for side in ("left", "right"):
            ids, mask = pad_batch(seqs, eos, side)  # pad with the EOS id itself
            assert torch.allclose(compute_rewards(model, ids, mask), alone, atol=1e-5)


def test_plain_transformers_agrees_with_rayrm(tmp_path):
    tok = load_tokenizer(MINILM)
    model = load_reward_model(TINY_QWEN3, tok, seed=3).eval()
    model.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    seqs = _seqs(tok)
    with torch.no_grad():
        ours = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "right"))
        theirs = plain(*pad_batch(seqs, tok.pad_token_id, "right")).logits[:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_encoder_keeps_its_pooler():
    tok = load_tokenizer(MINILM)
    model = load_reward_model(MINILM, tok).eval()
    assert not is_decoder(model)
    seqs = _seqs(tok)
    with torch.no_grad():
        batch = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "right"))
        alone = _alone(model, seqs)
        direct = model(*pad_batch(seqs, tok.pad_token_id, "right")).logits[:, 0]
    # the model's own head (pooler, classifier); compute_rewards runs BERT's last layer at [CLS] only
    assert torch.allclose(batch, alone, atol=1e-5) and torch.allclose(batch, direct, atol=1e-6)


def test_pretrained_backbone_new_head_is_seeded():
    # a pretrained backbone's fresh linear head must come from the seed, or two runs of one config differ
    tok = load_tokenizer(MINILM)
    heads = [load_reward_model(MINILM, tok, seed=s).classifier.weight for s in (5, 5, 6)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_encoder_left_padding_is_moved_right():
    tok = load_tokenizer(MINILM)
    model = load_reward_model(MINILM, tok).eval()
    seqs = _seqs(tok)
    with torch.no_grad():
        left = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "left"))
        right = compute_rewards(model, *pad_batch(seqs, tok.pad_token_id, "right"))
    assert torch.allclose(left, right, atol=1e-5)


def test_disable_dropout_makes_training_forwards_deterministic():
    tok = load_tokenizer(MINILM)
    seqs = pad_batch(_seqs(tok), tok.pad_token_id, "right")
    for name in (MINILM, TINY_QWEN3):
        model = load_reward_model(name, tok, seed=1)
        if name == TINY_QWEN3:  # Qwen3 keeps attention dropout as a float the SDPA call reads
            for m in model.modules():
                if hasattr(m, "attention_dropout"):
                    m.attention_dropout = 0.5
        model.train()
        with torch.no_grad():
            a, b = compute_rewards(model, *seqs), compute_rewards(model, *seqs)
        assert not torch.allclose(a, b), name  # dropout on: two training-mode forwards differ
        assert disable_dropout(model) > 0
        with torch.no_grad():
            a, b = compute_rewards(model, *seqs), compute_rewards(model, *seqs)
        assert torch.equal(a, b), name
        assert disable_dropout(model) == 0  # nothing left to turn off


def test_chunked_forwards_give_the_same_rewards_with_less_padding():
    tok = load_tokenizer(MINILM)
    texts = [" word" * n for n in (3, 40, 5, 38, 90, 2, 41, 88)]  # three length clusters, shuffled
    ids, _ = tokenize_texts(["Human: hi\n\nAssistant:"] * len(texts), texts, tok, 128, special_layout(tok))
    for name, side in ((MINILM, "right"), (TINY_QWEN3, "right"), (TINY_QWEN3, "left")):
        model = load_reward_model(name, tok, seed=1).eval()
        batch = pad_batch(ids, tok.pad_token_id, side)
        with torch.no_grad():
            whole = compute_rewards(model, *batch)
            for k in (2, 3, 4):
                parts = chunked_rewards(model, *batch, k)
                assert torch.allclose(parts, whole, atol=1e-5), (name, side, k, parts, whole)
        assert whole.std() > 0
