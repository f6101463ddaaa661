"""benchmarks/report.py: a small synthetic pytest-benchmark JSON -> the Markdown the README shows."""

from __future__ import annotations

import json

import pytest

from tests.utils import load_benchmark_script


@pytest.fixture(scope="module")
def report():
    return load_benchmark_script("report")


def _bench(provider, mode, n_rows, k, median_s, peak, tflops=None, device="cpu", group=None):
    return {
        "group": group or f"{mode} N={n_rows} k={k}",
        "name": f"test[{mode}-{n_rows}-{k}-{provider}]",
        "stats": {"median": median_s, "rounds": 3},
        "extra_info": {
            "provider": provider,
            "device": device,
            "mode": mode,
            "n_rows": n_rows,
            "n_selected": k,
            "hidden": 8,
            "vocab": 101,
            "dtype": "float32",
            "peak_mem_mib": peak,
            "tflops": tflops,
            "torch_version": "9.9.9",
            "triton_version": None,
        },
    }


def _data(device="cpu"):
    benches = [
        # Listed out of order: the report orders providers naive-first and groups by shape.
        _bench("chunked_torch", "fwd_bwd", 64, 64, 0.004, 2.0, 0.5, device),
        _bench("naive", "fwd_bwd", 64, 64, 0.002, 40.0, 1.0, device),
        _bench("naive", "fwd_bwd", 64, 16, 0.002, 40.0, 0.25, device),
        _bench("chunked_torch", "fwd_bwd", 64, 16, 0.001, None, 0.5, device),
        _bench("grpo_naive", "train_step", 4096, 4096, 2.0, 1000.0, None, device, group="train_step tiny"),
        _bench("t-spmo_tokrl", "train_step", 4096, 40, 0.5, 100.0, None, device, group="train_step tiny"),
    ]
    return {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "torch_threads": 1},
        "commit_info": {"id": "0123456789abcdef", "dirty": True},
        "benchmarks": benches + [{"group": None, "name": "foreign", "stats": {"median": 1.0}, "extra_info": {}}],
        "datetime": "2026-11-25T14:00:00+00:00",
        "version": "5.2.3",
    }


def _table(text: str, heading: str) -> list[list[str]]:
    """Rows (split into cells) of the first Markdown table under `### heading`."""
    lines = text.splitlines()
    rows: list[list[str]] = []
    for line in lines[lines.index(f"### {heading}") + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    return rows


def test_cpu_run_is_labelled_cpu(report):
    text = report.render(_data("cpu"))
    assert "CPU run" in text.splitlines()[0]
    assert "Test CPU, 2 cores" in text and "1 torch thread(s)" in text
    assert "2026-11-25" in text and "torch 9.9.9" in text and "0123456789"[:9] in text


def test_gpu_run_names_the_device_and_is_not_labelled_cpu(report):
    text = report.render(_data("NVIDIA H100 80GB HBM3"))
    assert "NVIDIA H100 80GB HBM3" in text.splitlines()[0]
    assert "CPU" not in text


def test_providers_are_columns_with_ratios_to_naive(report):
    rows = _table(report.render(_data()), "fwd_bwd N=64 k=64")
    assert rows[0] == ["", "naive", "chunked_torch"]
    cells = {row[0]: row[1:] for row in rows[2:]}
    assert cells["median ms"] == ["2.0", "4.0"]
    assert cells["x naive (time)"] == ["1.00x", "0.50x"]  # naive / provider: chunked is twice as slow
    assert cells["peak MiB"] == ["40.0", "2.0"]
    assert cells["x naive (memory)"] == ["1.00x", "20.00x"]
    assert cells["TFLOP/s (effective)"] == ["1.0", "0.5"]


def test_missing_memory_is_shown_as_missing_not_zero(report):
    rows = _table(report.render(_data()), "fwd_bwd N=64 k=16")
    cells = {row[0]: row[1:] for row in rows[2:]}
    assert cells["peak MiB"] == ["40.0", "—"]
    assert cells["x naive (memory)"] == ["1.00x", "—"]


def test_train_step_table_uses_the_naive_variant_and_lists_selected_rows(report):
    rows = _table(report.render(_data()), "train_step tiny")
    assert rows[0] == ["", "grpo_naive", "t-spmo_tokrl"]
    cells = {row[0]: row[1:] for row in rows[2:]}
    assert cells["x naive (time)"] == ["1.00x", "4.00x"]
    assert cells["x naive (memory)"] == ["1.00x", "10.00x"]
    assert cells["selected rows"] == ["4096", "40"]
    assert "forward tokens (share of naive)" not in cells  # only shown when the benchmarks record it


def test_train_step_table_shows_forward_tokens_as_a_share_of_naive(report):
    data = _data()
    for bench in data["benchmarks"]:
        if bench["extra_info"].get("mode") == "train_step":
            naive = bench["extra_info"]["provider"] == "grpo_naive"
            bench["extra_info"]["forward_tokens"] = 8000 if naive else 2000
    cells = {row[0]: row[1:] for row in _table(report.render(data), "train_step tiny")[2:]}
    assert cells["forward tokens (share of naive)"] == ["8000 (100%)", "2000 (25%)"]


def test_selected_fraction_scaling(report):
    rows = _table(report.render(_data()), "time vs selected rows: fwd_bwd N=64 D=8 V=101 float32")
    assert rows[0] == ["provider", "k=64 (100%)", "k=16 (25%)"]
    assert rows[2] == ["naive", "2.0 (100%)", "2.0 (100%)"]  # full logits: the fraction changes nothing
    assert rows[3] == ["chunked_torch", "4.0 (100%)", "1.0 (25%)"]


def test_cli_writes_the_markdown_file(report, tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_data()), encoding="utf-8")
    out = tmp_path / "table.md"
    assert report.main([str(src), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == report.render(_data())


def test_cli_merges_several_files(report, tmp_path):
    data = _data()
    kernels, steps = dict(data, benchmarks=data["benchmarks"][:4]), dict(data, benchmarks=data["benchmarks"][4:])
    paths = []
    for name, part in (("kernels.json", kernels), ("steps.json", steps)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(part), encoding="utf-8")
    out = tmp_path / "table.md"
    assert report.main([*map(str, paths), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == report.render(data)


def test_a_file_without_tokrl_benchmarks(report):
    assert "No tokrl benchmarks" in report.render({"benchmarks": []})


def test_selected_fraction_scaling_separates_head_modes(report):
    data = _data()
    frozen = [json.loads(json.dumps(b)) for b in data["benchmarks"] if b["extra_info"].get("mode") == "fwd_bwd"]
    for bench in frozen:
        bench["extra_info"]["head_grad"] = False
        bench["stats"]["median"] /= 2
    for bench in data["benchmarks"]:
        if bench["extra_info"].get("mode") == "fwd_bwd":
            bench["extra_info"]["head_grad"] = True
    data["benchmarks"] += frozen
    text = report.render(data)
    trained = _table(text, "time vs selected rows: fwd_bwd N=64 D=8 V=101 float32 head trained")
    frozen_rows = _table(text, "time vs selected rows: fwd_bwd N=64 D=8 V=101 float32 head frozen")
    assert trained[2] == ["naive", "2.0 (100%)", "2.0 (100%)"]
    assert frozen_rows[2] == ["naive", "1.0 (100%)", "1.0 (100%)"]
