"""The trained model written as an export: a plain Hugging Face directory plus rayrm.json and the eval report.

A collective under ZeRO-3 (full weights are gathered from every rank); rank 0 writes. No Ray here: the Ray Train
adapter reports the directory as the run's final checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from rayrm.config import TrainConfig
from rayrm.export import ExportMeta
from rayrm.train.engine import DEFAULT_AGGREGATE, resolved_precision


def write_export(engine: Any, tok: Any, cfg: TrainConfig, rank: int, out_dir: str, metrics: dict[str, float],
                 stats: dict[str, float], report_data: Any = None) -> ExportMeta | None:
    """Gather the full weights (every rank must call this), write the export to `out_dir` on rank 0 (with `report/`:
    accuracy by length bucket, reliability diagram, reward histograms; PNG + JSON). Returns its metadata on rank 0."""
    import deepspeed

    from rayrm.model import is_decoder, save_export

    model = engine.module.model
    state_dict = None
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None,
                                           enabled=cfg.deepspeed.zero_stage == 3):
        if rank == 0:
            state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if rank != 0:
        return None
    meta = ExportMeta(
        base_model=cfg.model,
        tokenizer=cfg.tokenizer or cfg.model,
        architecture=type(model).__name__,
        task=cfg.task,
        reward_readout=("token_classifier" if cfg.task != "reward"
                        else "last_non_pad_token" if is_decoder(model) else "encoder_pooler"),
        aggregate=cfg.train.aggregate or DEFAULT_AGGREGATE.get(cfg.task),
        step_separator=cfg.data.step_separator,
        max_length=cfg.data.max_length,
        hh_messages=cfg.data.hh_messages,
        padding_side=tok.padding_side,
        loss=cfg.train.loss,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        precision=resolved_precision(cfg),
        reward_mean=stats["mean"],
        reward_std=stats["std"],
        temperature=metrics.get("eval_temperature", 1.0),  # calibrated P(a > b) = sigmoid((r_a - r_b) / T)
        metrics=metrics,
    )
    lora = getattr(engine.module, "lora_info", None)
    if lora is not None:
        from rayrm.lora import head_name, lora_meta, merged_state_dict, write_adapter

        meta.lora = lora_meta(lora)
        if cfg.lora.save_adapter:
            write_adapter(state_dict, os.path.join(out_dir, "adapter"), cfg.lora, lora, cfg.model, head_name(model),
                          "SEQ_CLS" if cfg.task == "reward" else "TOKEN_CLS")
        state_dict = merged_state_dict(state_dict, lora["scaling"])
    save_export(model, tok, out_dir, meta, state_dict=state_dict)
    if report_data is not None:
        from rayrm.report import eval_report

        r_c, r_r, lengths = report_data
        eval_report(r_c, r_r, lengths, os.path.join(out_dir, "report"), temperature=meta.temperature)
    return meta
