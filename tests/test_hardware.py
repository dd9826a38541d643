"""Precision by machine: bf16 only where the CPU runs it natively, fp32 elsewhere."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fincompress.hardware import ISA_FLAGS, autocast_dtype, cpu_info, native_bf16, resolve_precision

from .conftest import ROOT

ZEN3 = {"cpu": "AMD EPYC 7B13", "isa": ["avx2", "fma"], "torch_cpu_capability": "AVX2",
        "onednn_max_cpu_isa": None}
SAPPHIRE_RAPIDS = {"cpu": "Intel Xeon Platinum 8481C", "isa": ["avx2", "fma", "avx512f",
                   "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"],
                   "torch_cpu_capability": "AVX512", "onednn_max_cpu_isa": None}


def test_bf16_only_where_the_cpu_has_it():
    assert native_bf16(SAPPHIRE_RAPIDS) == (True, "Intel Xeon Platinum 8481C runs bf16 natively "
                                                  "(avx512_bf16)")
    native, reason = native_bf16(ZEN3)
    assert not native and "no native bf16" in reason and "AMD EPYC 7B13" in reason
    capped = {**SAPPHIRE_RAPIDS, "onednn_max_cpu_isa": "AVX2"}
    native, reason = native_bf16(capped)
    assert not native and "ONEDNN_MAX_CPU_ISA=AVX2" in reason
    native, _ = native_bf16({**SAPPHIRE_RAPIDS, "torch_cpu_capability": "AVX2"})
    assert not native


def test_unreadable_flags_fall_back_to_a_probe(monkeypatch):
    from fincompress import hardware

    unknown = {**ZEN3, "isa": None}
    monkeypatch.setattr(hardware, "matmul_probe", lambda: (50.0, 200.0))
    assert native_bf16(unknown)[0]
    monkeypatch.setattr(hardware, "matmul_probe", lambda: (50.0, 6.0))
    native, reason = native_bf16(unknown)
    assert not native and "probe" in reason


def test_an_explicit_precision_wins():
    assert resolve_precision("bf16-mixed") == ("bf16-mixed", "trainer.precision=bf16-mixed set explicitly")
    assert resolve_precision("32-true")[0] == "32-true"
    assert resolve_precision("auto")[0] in ("32-true", "bf16-mixed")
    assert autocast_dtype("bf16-mixed") is torch.bfloat16 and autocast_dtype("32-true") is None


def test_emulated_avx2_machine_chooses_fp32():
    """What a user gets on an AVX2-only CPU, emulated on any CPU."""
    code = ("from fincompress.hardware import resolve_precision, cpu_info; "
            "print(resolve_precision('auto')[0], cpu_info()['torch_cpu_capability'])")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["32-true", "AVX2"]


def test_machine_record_names_the_cpu():
    info = cpu_info()
    assert info["cpu"] and info["cores"] >= 1 and info["torch_threads"] >= 1
    if sys.platform == "linux" and os.uname().machine == "x86_64":  # every machine here has AVX2
        assert "avx2" in info["isa"] and set(info["isa"]) <= set(ISA_FLAGS)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_inference_follows_the_precision(precision, minilm_tokenizer):
    from fincompress.models.sources import load_classifier

    model, tokenizer = load_classifier("bundled:minilm-l6", ["a", "b", "c"], random_init=True,
                                       config_overrides={"num_hidden_layers": 2, "hidden_size": 32,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 64})
    texts = ["Operating profit rose to EUR 13.1 mn .", "Sales fell ."]
    from fincompress.predict import TorchPredictor

    predictor = TorchPredictor(None, ["a", "b", "c"], precision, model, tokenizer)
    logits = torch.from_numpy(predictor.logits(texts))
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        fp32 = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if precision == "32-true":
        torch.testing.assert_close(logits, fp32, atol=1e-5, rtol=1e-5)
    else:  # bf16 rounding shows, but the numbers are the same model's
        assert not torch.equal(logits, fp32)
        torch.testing.assert_close(logits, fp32, atol=0.1, rtol=0.1)


def test_other_work_beside_a_timing_is_measured():
    """A process spinning on one core while this one waits: about half of 2 CPUs' time."""
    import subprocess
    import sys
    import time

    from fincompress.hardware import busy_cpu_seconds
    from fincompress.scoring import other_work_share

    if busy_cpu_seconds() is None:
        pytest.skip("/proc/stat cannot be read here")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the spinner is running
        before = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        time.sleep(1.5)
        share = other_work_share(*before)
    finally:
        spinner.kill()
        spinner.wait()
    assert share >= 0.8 / os.cpu_count()  # one busy core of them all, less scheduling noise


FREE_AND_ALLOCATE = """
import resource, sys
from fincompress.hardware import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def churn():  # a batch's activations: blocks of changing size, alive together, then freed
    for sizes in ([4, 9, 2, 13], [6, 11, 3, 15], [5, 8, 12, 7]) * 2:
        blocks = [b"x" * (size << 20) for size in sizes]  # written: touches every page
        del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}

    def faults(mode: str, extra: dict | None = None) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FREE_AND_ALLOCATE, mode],
                             env={**env, **(extra or {})}, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], int(out[1])

    default, kept = faults("default"), faults("keep")
    assert kept[0] == "True"
    # each 4-15 MiB block faults its pages in again by default: thousands of faults per block
    assert default[1] > 20_000 and kept[1] < default[1] / 20, (default, kept)
    # a user's own allocator settings win: nothing is changed
    assert faults("keep", {"MALLOC_ARENA_MAX": "2"})[0] == "False"


@pytest.mark.slow(budget_s=120)  # 17 s on 2 AVX2 cores: a diagnostic, kept out of the default suite
def test_the_step_profile_script_takes_a_training_step_apart(tmp_path):
    """scripts/training_step_profile.py: the matmul peak on all threads and on one, the
    forward, backward and optimizer times of a step, and the operators that dominate it (a
    one-layer MiniLM: matrix products lead); a bad count is refused by name."""
    output = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, "scripts/training_step_profile.py", "--layers", "1", "--batch", "4",
         "--tokens", "16", "--steps", "2", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert set(result["fp32_matmul_peak_gflops"]) == {f"{torch.get_num_threads()} threads", "1 thread"}
    assert all(rate > 0 for rate in result["fp32_matmul_peak_gflops"].values())
    assert set(result["step"]) == {"forward_ms", "backward_ms", "optimizer_ms"}
    assert all(ms > 0 for ms in result["step"].values())
    operators = [row["operator"] for row in result["top_operators"]]
    assert {"aten::mm", "aten::addmm"} & set(operators[:3])
    assert 0 < sum(row["share"] for row in result["top_operators"]) <= 1
    bad = subprocess.run([sys.executable, "scripts/training_step_profile.py", "--steps", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--steps must be at least 1, not 0" in bad.stderr
