"""The benchmarks run at tiny sizes and write well-formed results (no assertion on speed)."""

import json

import pytest


def test_decode_benchmark_smoke(exported, tmp_path):
    from bench.decode import bench_decode

    payload = bench_decode(exported["sweep"], batches=(1, 4), items=8, repeats=1, out_dir=tmp_path)
    files = list(tmp_path.glob("*-decode.json"))
    assert len(files) == 1
    written = json.loads(files[0].read_text())
    assert written["part"] == "decode" and written["ratios"] == payload["ratios"]
    assert set(written["ratios"]) == {"runtime_vs_generate_b1", "runtime_vs_optimum_b1",
                                      "runtime_vs_generate_b4", "runtime_vs_optimum_b4"}
    assert all(v > 0 for v in written["ratios"].values())
    for engine in ("runtime", "transformers_generate", "optimum_ort"):
        assert written["results"][f"{engine}_b4"]["tokens"] > 0


def test_gpu_check_says_so_without_a_gpu(capsys):
    import torch

    from bench.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine `make gpu-check` is the check itself")
    assert main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
