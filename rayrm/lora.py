"""LoRA for reward models, through PEFT: adapters injected into the transformers model in place.

    info = apply_lora(model, cfg.lora)          # freezes the backbone; adapters and the score head train
    sd = merged_state_dict(model.state_dict(), info["scaling"])   # a plain model's weights: W + B A * alpha / r
    write_adapter(model.state_dict(), out_dir, cfg.lora, info, base_model)            # PEFT's adapter layout

The adapters go in with `peft.inject_adapter_in_model`, so the model keeps its own class and attributes (the reward
read-out reaches its backbone and `score` head as for full fine-tuning) and DeepSpeed sees one module. The head
(`score` on decoders, `classifier` on encoders) is not adapted: it is new, so it is trained in full, as PEFT's
`modules_to_save` would. The export is merged: a plain `AutoModelFor...Classification` that needs no PEFT.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rayrm.config import LoraSection

HEADS = ("score", "classifier")  # the classification head's attribute on transformers' decoders / encoders
ADAPTER = "default"  # PEFT's adapter name inside module paths


def head_name(model: torch.nn.Module) -> str:
    """The attribute holding the model's classification head."""
    for name in HEADS:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no classification head ({' or '.join(HEADS)}) to train with LoRA")


def auto_targets(model: torch.nn.Module) -> list[str]:
    """Every linear layer of the backbone (attention and MLP projections, an encoder's pooler), by leaf name:
    q_proj, k_proj, ... on Qwen/Llama; query, key, value, dense on BERT. The head is left out."""
    head = head_name(model)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n != head and not n.startswith(head + ".")}
    return sorted(names)


def apply_lora(model: torch.nn.Module, cfg: LoraSection) -> dict[str, Any]:
    """Inject LoRA adapters (rank cfg.r) into `model` in place and freeze everything but them and the head.
    Returns what rayrm.json records: r, alpha, dropout, target_modules, trainable_fraction, and the scaling."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = auto_targets(model) if cfg.target_modules == ["auto"] else list(cfg.target_modules)
    head = head_name(model)
    if head in targets:
        raise ValueError(f"lora.target_modules names the head '{head}', which is always trained in full")
    inject_adapter_in_model(LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                       target_modules=targets), model)
    n_lora = 0
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or name.startswith(head + ".")
        n_lora += ".lora_" in name
    if n_lora == 0:
        raise ValueError(f"lora.target_modules {targets} matched no layer of {type(model).__name__}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": targets,
            "trainable_fraction": trainable / total, "scaling": cfg.alpha / cfg.r}


def merged_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The state dict of an adapted model (`<path>.base_layer.weight`, `<path>.lora_A.default.weight`, ...) ->
    the plain model's (`<path>.weight` = base + lora_B @ lora_A * scaling), computed in fp32."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            path, _, leaf = key.partition(".base_layer.")
            if leaf == "weight":
                a = state_dict[f"{path}.lora_A.{ADAPTER}.weight"].float()
                b = state_dict[f"{path}.lora_B.{ADAPTER}.weight"].float()
                value = (value.float() + (b @ a) * scaling).to(value.dtype)
            out[f"{path}.{leaf}"] = value
        else:
            out[key] = value
    return out


def write_adapter(state_dict: dict[str, torch.Tensor], out_dir: str, cfg: LoraSection, info: dict[str, Any],
                  base_model: str, head: str, task_type: str) -> str:
    """The adapters and the head in PEFT's on-disk layout (adapter_config.json, adapter_model.safetensors), so
    `peft.PeftModel.from_pretrained(base, out_dir)` rebuilds the trained model on top of the base."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            tensors["base_model.model." + key.replace(f".{ADAPTER}.", ".")] = value.contiguous()
        elif key.startswith(head + "."):
            tensors["base_model.model." + key] = value.contiguous()
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=info["target_modules"],
               modules_to_save=[head], task_type=task_type, base_model_name_or_path=base_model).save_pretrained(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("LoRA adapter and score head written by rayrm; the export above is the merged model.\n"
                f"Load: PeftModel.from_pretrained(<base {task_type} model>, this_dir)\n")
    return out_dir


def lora_meta(info: dict[str, Any]) -> dict[str, Any]:
    """The `lora` entry of rayrm.json."""
    return {k: info[k] for k in ("r", "alpha", "dropout", "target_modules", "trainable_fraction")}

