"""GGUF checkpoints as plain Hugging Face folders: dequantised once, cached, shared by every process on a machine.

transformers reads a `.gguf` file itself (`from_pretrained(folder, gguf_file=NAME)`, with the `gguf` package) and
dequantises its weights to fp32, but a model loaded that way refuses `save_pretrained`, and loading it costs tens of
seconds in every Ray worker and actor. So a GGUF model is converted once per machine into a plain folder (config,
`model.safetensors`, the GGUF's tokenizer and chat template) under the cache directory, and everything else loads
that folder like any local checkpoint.

Cache: `$RAYRM_CACHE_DIR` if set, else `$XDG_CACHE_HOME/rayrm`, else `~/.cache/rayrm`; one folder per GGUF file,
keyed by its path, size and modification time. Two processes that start at once (the workers of one training job)
take a file lock: one converts, the others wait and reuse its folder; a folder is renamed into place only when
complete, so a killed conversion leaves nothing that looks usable.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from rayrm.errors import InputNotFoundError, UserError

DONE = ".rayrm-gguf-complete"


def cache_dir() -> Path:
    """Where converted GGUF models live (`RAYRM_CACHE_DIR`, else the user's cache dir)."""
    if os.environ.get("RAYRM_CACHE_DIR"):
        return Path(os.environ["RAYRM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rayrm"


def cached_folder(gguf_path: str) -> Path:
    """The cache folder for one GGUF file (not necessarily there yet)."""
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{Path(gguf_path).stem}-{key}"


def _convert(gguf_path: str, out: Path) -> None:
    """Dequantise `gguf_path` into `out`: the causal LM's weights in fp32 (plain safetensors) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as e:  # the `gguf` package is missing
        raise UserError(f"model {gguf_path}: reading GGUF files needs the `gguf` package ({e})") from None
    # A GGUF-loaded model refuses save_pretrained; the same weights in a model built from its config save normally.
    config = quantised.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def gguf_to_folder(gguf_path: str) -> str:
    """A plain HF folder with the model in `gguf_path`, converting it on first use (see the module docstring)."""
    if not os.path.isfile(gguf_path):
        raise InputNotFoundError(f"model {gguf_path!r}: no such GGUF file (cwd {os.getcwd()})")
    target = cached_folder(gguf_path)
    if (target / DONE).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (target / DONE).exists():  # another process converted it while this one waited
            return str(target)
        tmp = Path(f"{target}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)  # a folder without the marker is a leftover, never complete
        _convert(gguf_path, tmp)
        (tmp / DONE).write_text(os.path.abspath(gguf_path) + "\n")
        os.rename(tmp, target)
    return str(target)


def package_gguf(package_dir: Path, name: str) -> str | None:
    """The one `.gguf` file at the top of an installed package's folder, None when there is none."""
    found = sorted(package_dir.glob("*.gguf"))
    if len(found) > 1:
        raise UserError(f"model {name!r}: the package holds several GGUF files ({', '.join(f.name for f in found)}); "
                        "pass the path of one")
    return str(found[0]) if found else None
