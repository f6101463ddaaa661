"""`tokrl plot`: learning curves from run directories (real tiny runs and runs shaped like the embedded default)."""

from __future__ import annotations

import json
import math
import random
import struct
import sys

import pytest
import yaml

from tests.trainer_helpers import HashRewardTrainer, small_config
from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.run.plot import DPI, FIGURE_PX, PANELS, auto_window, load_run, moving_average, plot_runs


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def fake_run(path, algorithm, *, steps=1600, selected=50.0, peak_mem=None, seed=0):
    """A run directory shaped like a finished embedded-default run: eval before and after only, one train
    record per step, results.json and the final checkpoint's config.yaml."""
    rng = random.Random(seed)
    records = [{"kind": "eval", "step": 0, "when": "before", "accuracy": 0.266, "n": 500}]
    for step in range(1, steps + 1):
        record = {
            "kind": "train",
            "step": step,
            "reward_mean": min(1.0, 0.3 + step / (3 * steps) + rng.gauss(0, 0.05)),
            "selected_tokens": int(selected + rng.gauss(0, 5)),
            "step_time_s": 0.17 + abs(rng.gauss(0, 0.02)),
            "kl": None,
        }
        if peak_mem is not None:
            record["update_peak_mem_mib"] = peak_mem + rng.random()
        records.append(record)
    records.append({"kind": "eval", "step": steps, "when": "after", "accuracy": 0.45, "n": 500})
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "results.json").write_text(json.dumps({"algorithm": algorithm, "steps": steps}))
    (path / f"checkpoint-{steps}").mkdir()
    (path / f"checkpoint-{steps}" / "config.yaml").write_text(yaml.safe_dump({"algorithm": algorithm}))
    return path


def test_plot_two_tiny_runs_writes_a_png_of_the_expected_size(tmp_path):
    runs = []
    for algorithm in ("grpo", "t-spmo"):
        result = HashRewardTrainer(small_config(tmp_path / algorithm, algorithm=algorithm, steps=3)).run()
        runs.append(str(result.output_dir))
    out = tmp_path / "pictures" / "curves.png"
    assert main(["plot", *runs, "--out", str(out)]) == 0
    assert png_size(out) == FIGURE_PX
    assert [load_run(r).label for r in runs] == ["grpo", "t-spmo"]


def test_plot_runs_shaped_like_the_embedded_default(tmp_path):
    dirs = [
        fake_run(tmp_path / "tiny-multiplication-t-spmo", "t-spmo", selected=52, seed=1),
        fake_run(tmp_path / "tiny-multiplication-s-grpo", "s-grpo", selected=552, seed=2),
        fake_run(tmp_path / "tiny-multiplication-grpo", "grpo", selected=674, peak_mem=300.0, seed=3),
    ]
    out = plot_runs(dirs, tmp_path / "curves.png")
    assert png_size(out) == FIGURE_PX and FIGURE_PX[0] % DPI == 0


def test_panels_and_labels(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    a = fake_run(tmp_path / "a", "grpo", steps=200, seed=1)
    b = fake_run(tmp_path / "b", "grpo", steps=200, peak_mem=100.0, seed=2)
    (b / "results.json").unlink()  # the label then comes from the checkpoint's config.yaml
    plot_runs([a, b], tmp_path / "x.png", smooth=10)
    fig = saved[0]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [p.title for p in PANELS]  # run b logs update_peak_mem_mib: the optional panel is drawn
    assert "moving average over 10 steps" in fig._suptitle.get_text()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["grpo (a)", "grpo (b)"]  # same algorithm twice: the folder tells them apart
    reward = fig.axes[0].get_lines()
    raw, smooth = reward[0].get_ydata(), reward[1].get_ydata()
    assert list(smooth) == pytest.approx(moving_average(list(raw), 10))

    saved.clear()
    plot_runs([a], tmp_path / "y.png")
    assert [ax.get_title() for ax in saved[0].axes if ax.get_title()] == [p.title for p in PANELS if not p.optional]


def test_moving_average_and_window(tmp_path):
    values = [random.random() for _ in range(37)]
    for window in (1, 4, 37, 50):
        expected = [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]
        assert moving_average(values, window) == pytest.approx(expected)
    assert math.isclose(moving_average([1.0, 3.0], 2)[1], 2.0)
    assert auto_window([load_run(fake_run(tmp_path / "long", "grpo"))]) == 1600 // 50
    assert auto_window([load_run(fake_run(tmp_path / "short", "grpo", steps=3))]) == 1


def test_plot_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == EXIT_CONFIG_ERROR
    assert "no metrics.jsonl" in capsys.readouterr().err
    run = fake_run(tmp_path / "run", "grpo", steps=5)
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png"), "--smooth", "-1"]) == EXIT_CONFIG_ERROR
    assert "smooth: must be >= 0" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "tokrl plot needs the 'matplotlib' package" in err and "pip install 'tokrl[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_out_without_suffix_names_the_file_written(tmp_path, capsys):
    # `--out p/x` printed "wrote p/x" and wrote p/x.png.
    run = fake_run(tmp_path / "run", "grpo", steps=5)
    assert main(["plot", str(run), "--out", str(tmp_path / "p" / "x")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'p' / 'x.png'}"
    assert png_size(tmp_path / "p" / "x.png") == FIGURE_PX
    assert main(["plot", str(run), "--out", str(tmp_path / "x.gif2")]) == EXIT_CONFIG_ERROR
    assert "out: unsupported picture format '.gif2'; use one of:" in capsys.readouterr().err


def test_lines_that_are_not_records_are_skipped_with_a_warning(tmp_path, capsys, caplog):
    run = fake_run(tmp_path / "run", "grpo", steps=5)
    with (run / "metrics.jsonl").open("ab") as f:
        f.write(b'[1, 2]\n{"step": "x", "kind": "train"}\n\xff\xfe\n')
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 0
    assert "skipped 3 line(s)" in caplog.text and "(line 8, 9, 10)" in caplog.text
    assert len(load_run(run).train) == 5


def test_unwritable_out_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import matplotlib.figure

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", read_only)
    run = fake_run(tmp_path / "run", "grpo", steps=5)
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"out: cannot write {str(tmp_path / 'x.png')!r} (Read-only file system)" in err and "Traceback" not in err


def test_a_committed_run_with_gzipped_metrics_loads_like_the_plain_one(tmp_path):
    import gzip
    import shutil

    plain = fake_run(tmp_path / "plain", "t-spmo", steps=40)
    packed = tmp_path / "packed"
    shutil.copytree(plain, packed)
    (packed / "metrics.jsonl.gz").write_bytes(gzip.compress((packed / "metrics.jsonl").read_bytes()))
    (packed / "metrics.jsonl").unlink()  # as benchmarks/results/ keeps a run
    a, b = load_run(plain), load_run(packed)
    assert a.train == b.train and a.evals == b.evals and len(b.train) == 40
