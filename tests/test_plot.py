"""`vicuna-cloud plot RUN`: a real PNG (opened and looked at) and the terminal chart."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from helpers.cli import run_cli
from helpers.fake_run import write_fake_run
from vicuna_cloud.reports import plot
from vicuna_cloud.storage import open_bucket


def test_plot_data_keeps_redone_steps_once_and_marks_the_preemption(local_bucket_uri):
    write_fake_run(local_bucket_uri)
    d = plot.plot_data(open_bucket(local_bucket_uri), "vicuna-plot-run")
    assert d.steps == list(range(1, 21))           # steps 11, 12 were trained twice
    assert d.eval_steps == [5, 10, 15, 20]
    assert d.segments == [(0, 12), (10, 20)]
    assert d.preemptions == [12]
    assert d.total_steps == 20
    assert d.loss[0] > d.loss[-1]


def test_plot_writes_a_png_that_shows_curves_and_a_preemption(local_bucket_uri, tmp_path,
                                                               capsys, monkeypatch):
    from PIL import Image

    write_fake_run(local_bucket_uri)
    out = tmp_path / "loss.png"
    r = run_cli(capsys, monkeypatch, "plot", "vicuna-plot-run", "--bucket", local_bucket_uri,
                "--out", str(out))
    assert r.code == 0, r.err
    assert "wrote" in r.out and str(out) in r.out
    img = Image.open(out)
    assert img.format == "PNG"
    assert img.size == (900, 750)
    px = np.asarray(img.convert("RGB")).astype(int)
    non_white = (px.sum(axis=2) < 740).mean()
    assert non_white > 0.02, f"only {non_white:.2%} of the pixels are drawn"
    # matplotlib's tab:red (214, 39, 40) marks the preemption; tab:blue (31, 119, 180) the loss.
    for rgb in ((214, 39, 40), (31, 119, 180), (255, 127, 14)):
        near = (np.abs(px - np.array(rgb)).sum(axis=2) < 30).sum()
        assert near > 50, f"colour {rgb} drawn on only {near} pixels"


def test_plot_in_the_terminal_names_the_run_and_its_preemption(local_bucket_uri, capsys,
                                                                monkeypatch):
    write_fake_run(local_bucket_uri)
    r = run_cli(capsys, monkeypatch, "plot", "vicuna-plot-run", "--bucket", local_bucket_uri)
    assert r.code == 0, r.err
    assert "vicuna-plot-run, step 20/20, 1 preemption(s)" in r.out
    assert "train loss" in r.out and "eval loss" in r.out and "tokens/s" in r.out
    assert len(r.out.splitlines()) >= 20
    assert "\x1b[" not in r.out  # piped: no colour codes


def test_plot_of_a_run_without_metrics_is_one_line_error(local_bucket_uri, capsys,
                                                          monkeypatch, tmp_path):
    r = run_cli(capsys, monkeypatch, "plot", "vicuna-none", "--bucket", local_bucket_uri)
    assert r.code == 2
    assert "nothing to plot" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli(capsys, monkeypatch, "plot", "vicuna-none", "--bucket", local_bucket_uri,
                "--out", str(tmp_path / "x.svg"))
    assert r.code == 2 and "only PNG" in r.err


def test_help_does_not_import_the_plotting_libraries():
    code = ("import sys; from vicuna_cloud.cli import app; "
            "bad = [m for m in ('matplotlib', 'plotext', 'torch', 'sky') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"

