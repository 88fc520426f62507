"""callbacks.profile: GPU idle gaps in a profiler trace and the host side of each; the ProfileSteps callback."""

from __future__ import annotations

import gzip
import json

from callbacks.profile import gpu_gaps, main


def _k(name, ts, dur, corr, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def _host(name, ts, dur, cat="cpu_op", corr=None, tid=7):
    e = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid}
    if corr is not None:
        e["args"] = {"correlation": corr}
    return e


TRACE = {"traceEvents": [
    _k("gemm_a", 0, 100, 1), _k("memcpy", 50, 100, 2, cat="gpu_memcpy"),  # two streams overlap: busy 0..150
    _k("gemm_b", 160, 40, 3),  # a 10 us gap: under the threshold
    _k("attn_fwd", 1200, 100, 4),  # 1000 us gap, the host was blocked in a synchronise, then launched late
    _k("add", 1400, 10, 5),  # 100 us gap
    _host("step", 0, 2000), _host("aten::item", 210, 900), _host("cudaStreamSynchronize", 220, 880, "cuda_runtime"),
    _host("aten::_scaled_dot_product_flash_attention", 1150, 40), _host("cudaLaunchKernel", 1160, 5, "cuda_runtime", 4),
    _host("aten::add", 1340, 20), _host("cudaLaunchKernel", 1345, 5, "cuda_runtime", 5),
    _host("aten::other_thread", 1340, 20, tid=8),
    _host("lightning/pytorch/loops/fit_loop.py(400): advance", 0, 2000, "python_function"),
    _host("datamodules/augment.py(164): __call__", 1100, 100, "python_function"),
    _host("torch/nn/functional.py(5000): scaled_dot_product_attention", 1148, 45, "python_function"),
]}


def test_gaps_are_found_sized_and_attributed_to_the_host():
    r = gpu_gaps(TRACE, min_gap_us=50)
    assert r["gpu_events"] == 5 and r["span_us"] == 1410 and r["busy_us"] == 150 + 40 + 100 + 10
    assert r["gaps_counted"] == 2 and r["idle_us"] == 1100
    first, second = r["gaps"]
    assert first["gap_us"] == 1000 and first["next_kernel"] == "attn_fwd"
    assert first["launched_by"] == "aten::_scaled_dot_product_flash_attention" and first["launch_lag_us"] == 960
    assert first["host_calls"] == ["cudaStreamSynchronize"], "the synchronise that held the host is named"
    assert second["launched_by"] == "aten::add" and second["host_calls"] == []
    assert r["idle_by_launcher"] == {"aten::_scaled_dot_product_flash_attention": 1000, "aten::add": 100}
    assert first["python"] == ["lightning/pytorch/loops/fit_loop.py(400): advance",
                               "datamodules/augment.py(164): __call__",
                               "torch/nn/functional.py(5000): scaled_dot_product_attention"]
    # by the innermost frame of our code (or Lightning's), not torch's
    assert r["idle_by_python"] == {"datamodules/augment.py(164): __call__": 1000,
                                   "lightning/pytorch/loops/fit_loop.py(400): advance": 100}
    assert gpu_gaps(TRACE, min_gap_us=5)["gaps_counted"] == 3


def test_cli_reads_a_gzipped_trace(tmp_path, capsys):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(TRACE, f)
    out = main([str(path), "--min-gap-us", "500"])
    assert json.loads(capsys.readouterr().out)["idle_us"] == out["idle_us"] == 1000
    assert gpu_gaps({"traceEvents": []})["gaps"] == []
