"""LoRA through PEFT: adapters in place, the merged export, PEFT's adapter layout; activation checkpointing and ZeRO
offload settings; on a real local Ray cluster, LoRA training of the tiny decoder with ZeRO-2 and ZeRO-3."""

import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import MINILM, TINY_QWEN3
from faults import ExitAfterCheckpoint
from rayrm.batching import pad_batch
from rayrm.config import ConfigError, LoraSection, TrainConfig, load_config
from rayrm.lora import apply_lora, auto_targets, merged_state_dict, write_adapter
from rayrm.model import compute_rewards, load_reward_model, load_tokenizer
from rayrm.train.engine import deepspeed_config


def _batch(tok, n=3):
    seqs = [tok(f"Human: question {i}\n\nAssistant: " + "an answer " * (i + 1))["input_ids"] for i in range(n)]
    return pad_batch(seqs, tok.pad_token_id, "right")


@pytest.mark.parametrize("name, targets", [
    (TINY_QWEN3, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    (MINILM, ["dense", "key", "query", "value"]),
])
def test_merged_weights_and_the_adapter_give_the_adapted_model(tmp_path, name, targets):
    tok = load_tokenizer(MINILM)
    model = load_reward_model(name, tok, seed=3).eval()
    assert auto_targets(model) == targets  # attention and MLP projections (BERT: its linear layers), not the head
    info = apply_lora(model, LoraSection(r=4, alpha=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.split(".")[0] in ("score", "classifier") for n in trainable)
    assert 0 < info["trainable_fraction"] < 0.05 and info["scaling"] == 2.0
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: adapters (B starts at 0) and head moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    ids, mask = _batch(tok)
    with torch.no_grad():
        want = compute_rewards(model, ids, mask)
        sd = model.state_dict()
        model.save_pretrained(tmp_path / "merged", state_dict=merged_state_dict(sd, info["scaling"]))
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        assert torch.allclose(compute_rewards(plain, ids, mask), want, atol=1e-5)
        assert torch.allclose(plain(input_ids=ids, attention_mask=mask).logits[:, 0], want, atol=1e-5)
        from peft import PeftModel

        write_adapter(sd, str(tmp_path / "adapter"), LoraSection(r=4, alpha=8), info, name, "score"
                      if name == TINY_QWEN3 else "classifier", "SEQ_CLS")
        peft_model = PeftModel.from_pretrained(load_reward_model(name, tok, seed=3), tmp_path / "adapter").eval()
        assert torch.allclose(peft_model(input_ids=ids, attention_mask=mask).logits[:, 0], want, atol=1e-5)


@pytest.mark.parametrize("name, head", [(TINY_QWEN3, "score"), (MINILM, "classifier")])
def test_token_classifiers_take_lora_too(tmp_path, name, head):
    """ORM/PRM heads: the token classifier's head trains in full, the merged weights give the same logits."""
    from rayrm.model import load_token_model

    tok = load_tokenizer(MINILM)
    model = load_token_model(name, tok, 3, seed=1).eval()
    info = apply_lora(model, LoraSection(r=2))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n} == {head}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        ids, mask = _batch(tok)
        want = model(input_ids=ids, attention_mask=mask).logits
        plain = load_token_model(name, tok, 3, seed=2).eval()
        plain.load_state_dict(merged_state_dict(model.state_dict(), info["scaling"]))
        assert torch.allclose(plain(input_ids=ids, attention_mask=mask).logits, want, atol=1e-5)


def test_lora_settings_are_checked():
    tok = load_tokenizer(MINILM)
    with pytest.raises(ValueError, match="names the head 'score'"):
        apply_lora(load_reward_model(TINY_QWEN3, tok), LoraSection(r=2, target_modules=["q_proj", "score"]))
    with pytest.raises(ValueError):  # PEFT: no such module
        apply_lora(load_reward_model(TINY_QWEN3, tok), LoraSection(r=2, target_modules="no_such_proj"))
    with pytest.raises(ConfigError, match="offload_param needs zero_stage 3"):
        load_config(None, ["deepspeed.offload_param=true"], TrainConfig)
    with pytest.raises(ConfigError, match="offload_optimizer needs zero_stage 2 or 3"):
        load_config(None, ["deepspeed.offload_optimizer=true", "deepspeed.zero_stage=1"], TrainConfig)
    cfg = load_config(None, ["deepspeed.zero_stage=3", "deepspeed.offload_param=true",
                             "deepspeed.offload_optimizer=true"], TrainConfig)
    zero = deepspeed_config(cfg)["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu"} and zero["offload_optimizer"] == {"device": "cpu"}


# ---------------------------------------------------------------- on Ray Train + DeepSpeed
def _cfg(tmp_path, data_path, *overrides) -> TrainConfig:
    base = [f"name=l{abs(hash(overrides)) % 10**8}", f"output_dir={tmp_path}", f"model={TINY_QWEN3}",
            f"tokenizer={MINILM}", f"data.path={data_path}", "data.max_length=64", "data.eval_fraction=0.125",
            "train.micro_batch_size=8", "train.eval_batch_size=4", "optim.lr=1e-2", "train.log_every=1",
            "lora.r=4", "lora.alpha=8", "lora.save_adapter=true"]
    return load_config(None, base + list(overrides), TrainConfig)


def _check_lora_export(export: str, cfg: TrainConfig, m: dict) -> None:
    """Plain transformers reproduces training's held-out numbers; only adapters (low rank) and the head moved."""
    from test_train import _check_export

    _check_export(export, cfg, m)  # merged weights == the adapted model that was evaluated in training
    meta = json.load(open(os.path.join(export, "rayrm.json")))
    assert meta["lora"]["r"] == 4 and meta["lora"]["target_modules"][0] == "down_proj"
    assert 0 < meta["lora"]["trainable_fraction"] < 0.05
    assert m["peak_memory_gib"] > 0.1 and m["peak_memory_gib_w1"] > 0.1
    tok = load_tokenizer(MINILM)
    init = load_reward_model(TINY_QWEN3, tok, seed=cfg.train.seed).state_dict()
    final = AutoModelForSequenceClassification.from_pretrained(export).state_dict()
    adapted = 0
    for k, w0 in init.items():
        delta = (final[k].double() - w0.double())
        if k.startswith("score."):
            assert delta.abs().max() > 1e-3, k  # the head is trained in full
        elif any(f".{t}.weight" in k for t in meta["lora"]["target_modules"]):
            s = torch.linalg.svdvals(delta)
            assert s[0] > 1e-4 and float(s[4:].max()) < 1e-4 * float(s[0]), k  # moved, by a rank-4 update
            adapted += 1
        else:
            assert torch.equal(final[k], w0), k  # embeddings, norms, biases: untouched
    assert adapted == 2 * 7  # two layers x seven projections
    from peft import PeftModel

    base = load_reward_model(TINY_QWEN3, tok, seed=cfg.train.seed)
    peft_model = PeftModel.from_pretrained(base, os.path.join(export, "adapter")).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(export).eval()
    ids, mask = _batch(tok)
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids, attention_mask=mask).logits,
                              plain(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    # rayrm's scorer (offline scoring and serving) on the merged export == plain transformers, one row at a time
    from rayrm.infer import RewardScorer

    scorer = RewardScorer(export)
    prompts, completions = ["Human: hi\n\nAssistant:", "Human: why?\n\nAssistant:"], [" hello there", " because"]
    ours = scorer.score(prompts, completions)
    with torch.no_grad():
        alone = [float(plain(input_ids=torch.tensor([scorer.tokenize([p], [c]).ids[0]])).logits[0, 0])
                 for p, c in zip(prompts, completions)]
    assert ours == pytest.approx(alone, abs=1e-5)


@pytest.mark.integration
def test_lora_zero2_two_workers(ray_cluster, tmp_path, hh_small):
    from rayrm.train import run_training

    cfg = _cfg(tmp_path, hh_small, "deepspeed.zero_stage=2")
    m = run_training(cfg)
    assert m["step"] == 6
    _check_lora_export(os.path.join(tmp_path, "final"), cfg, m)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("overrides, fail, restarts", [
    (["deepspeed.zero_stage=3", "deepspeed.offload_param=true", "deepspeed.offload_optimizer=true",
      "train.activation_checkpointing=true"], False, 0),
    (["train.checkpoint_every=2", "train.max_failures=1"], True, 1),  # a worker dies after the step-2 checkpoint
], ids=["zero3-offload-checkpointing", "resume-after-worker-failure"])
def test_lora_zero3_offload_checkpointing_and_resume(ray_cluster, tmp_path, hh_small, overrides, fail, restarts):
    from rayrm.train import run_training

    cfg = _cfg(tmp_path, hh_small, *overrides)
    m = run_training(cfg, on_checkpoint=ExitAfterCheckpoint(step=2) if fail else None)
    assert m["restarts"] == restarts and m["step"] == 6
    _check_lora_export(os.path.join(tmp_path, "final"), cfg, m)
