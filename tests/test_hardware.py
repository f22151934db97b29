"""Precision `auto`: bf16 where the hardware computes in it (AMX CPUs, bf16 GPUs), fp32 elsewhere."""

import pytest

from rayrm.hardware import cpu_flags, has_amx_bf16, inference_dtype, training_precision

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}
AVX512_NO_AMX = AVX2 | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}  # bf16 dot products, no tile unit
AMX = AVX512_NO_AMX | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.delenv("RAYRM_AUTO_DTYPE", raising=False)  # the test suite pins auto to fp32 (conftest)


def test_auto_picks_bf16_only_on_amx_cpus(unpinned):
    assert inference_dtype("auto", "cpu", AVX2) == "fp32"
    assert inference_dtype("auto", "cpu", AVX512_NO_AMX) == "fp32"  # avx512_bf16 alone: bf16 matmuls are slower
    assert inference_dtype("auto", "cpu", AMX) == "bf16"
    assert has_amx_bf16(AMX) and not has_amx_bf16(AVX512_NO_AMX)
    for explicit in ("fp32", "bf16"):  # an explicit choice is kept on any CPU
        assert inference_dtype(explicit, "cpu", AVX2) == inference_dtype(explicit, "cpu", AMX) == explicit


def test_this_machine_reads_its_own_flags(unpinned):
    flags = cpu_flags()
    assert flags, "no CPU flags read from /proc/cpuinfo"
    assert inference_dtype("auto", "cpu") == ("bf16" if "amx_bf16" in flags else "fp32")


def test_training_auto_is_fp32_on_every_cpu(unpinned):
    # bf16 autocast's backward is slower than fp32 even on AMX (docs/benchmarks.md), so training auto stays fp32
    # (the CPU's flags are not read at all); an explicit precision is kept as given
    assert training_precision("auto", "cpu") == "fp32"
    assert training_precision("bf16", "cpu") == "bf16" and training_precision("fp32", "cpu") == "fp32"


def test_pinning_auto_and_a_bad_pin(monkeypatch):
    monkeypatch.setenv("RAYRM_AUTO_DTYPE", "bf16")
    assert inference_dtype("auto", "cpu", AVX2) == "bf16" and training_precision("auto", "cpu") == "bf16"
    assert inference_dtype("fp32", "cpu", AMX) == "fp32"  # an explicit dtype beats the pin
    monkeypatch.setenv("RAYRM_AUTO_DTYPE", "fp16")
    with pytest.raises(ValueError, match="RAYRM_AUTO_DTYPE"):
        inference_dtype("auto", "cpu")


def test_scorer_resolves_auto_and_reports_it(tiny_export, unpinned):
    from rayrm.infer import RewardScorer

    scorer = RewardScorer(tiny_export)  # dtype auto
    assert scorer.dtype == inference_dtype("auto", "cpu")
    assert str(next(scorer.model.parameters()).dtype) == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[scorer.dtype]


def test_packing_layout_per_device():
    from rayrm.hardware import packing_layout

    for device in ("cpu", "cuda"):
        assert packing_layout("off", device) == packing_layout("auto", device) == "off"
    assert packing_layout("on", "cpu") == "rows"  # SDPA with transformers' packed-sequence mask
    assert packing_layout("on", "cuda") == "row"  # one row through the flash varlen kernel
