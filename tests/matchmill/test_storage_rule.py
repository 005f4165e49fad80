"""Where runs live, one rule (docs/storage.md): no storage = the default storage ($MATCHMILL_RUNS, else
${XDG_DATA_HOME:-~/.local/share}/matchmill/runs); a relative storage in a job file = the file's
folder; on the command line = the working directory; a bare run name = the run under the default
storage. Before: every preset said ``storage: file://./runs`` and the same command from another
directory recomputed into a new ``./runs`` there."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from matchmill.cli import resolve_run_args
from matchmill.config import ConfigError, default_storage, resolve_run_arg
from matchmill.pipeline.config import load_config, resolve, run_url
from matchmill.training.config import default_train_config, load_train_config
from matchmill.training.config import run_url as train_run_url
from tests.helpers.paths import REPO


def test_the_default_storage_is_absolute_and_under_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATCHMILL_RUNS", str(tmp_path / "mine"))
    assert run_url(resolve({})) == f"file://{tmp_path}/mine/demo"
    monkeypatch.delenv("MATCHMILL_RUNS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_storage() == f"file://{tmp_path}/xdg/matchmill/runs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage() == f"file://{tmp_path}/home/.local/share/matchmill/runs"
    monkeypatch.setenv("MATCHMILL_RUNS", "s3://bucket/runs/")
    assert run_url(resolve({"run_name": "x"})) == "s3://bucket/runs/x"


@pytest.mark.parametrize("written", ["./r", "r", "file://./r", "sub/../r"])
def test_a_relative_storage_in_a_job_file_is_the_file_folders(tmp_path, monkeypatch, written):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "job.yaml").write_text(f"storage: {written}\nrun_name: a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (tmp_path, elsewhere):  # the same job from two working directories: one run
        monkeypatch.chdir(cwd)
        assert run_url(load_config(jobs / "job.yaml")) == f"file://{jobs}/r/a"
        assert run_url(load_config(Path("..") / "jobs" / "job.yaml" if cwd == elsewhere else "jobs/job.yaml")) \
            == f"file://{jobs}/r/a"


def test_absolute_home_and_remote_storage_in_a_job_file_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for written, url in (("/abs/runs", "file:///abs/runs/a"), ("~/runs", f"file://{tmp_path}/home/runs/a"),
                         ("file:///abs/runs", "file:///abs/runs/a"), ("s3://bucket/runs", "s3://bucket/runs/a")):
        (tmp_path / "job.yaml").write_text(f"storage: {written}\nrun_name: a\n")
        assert run_url(load_config(tmp_path / "job.yaml")) == url


def test_a_relative_storage_on_the_command_line_is_the_working_directorys(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "job.yaml").write_text("storage: ./from-file\nrun_name: a\n")
    monkeypatch.chdir(tmp_path)
    assert run_url(load_config(jobs / "job.yaml", ["storage=./typed"])) == f"file://{tmp_path}/typed/a"
    assert run_url(load_config(jobs / "job.yaml", ["storage=file://./typed"])) == f"file://{tmp_path}/typed/a"


def test_a_bad_storage_in_a_job_file_is_still_refused(tmp_path):
    (tmp_path / "job.yaml").write_text("storage: 's3:/bucket'\n")
    with pytest.raises(ConfigError, match="did you mean s3://bucket"):
        load_config(tmp_path / "job.yaml")


def test_no_preset_job_file_names_a_storage():
    """Every shipped job file uses the default storage (a relative one would now be the file's folder)."""
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        assert "storage" not in yaml.safe_load(path.read_text()), path


def test_a_training_job_defaults_to_the_same_storage_and_finds_runs_by_name(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("MATCHMILL_RUNS", str(runs))
    monkeypatch.chdir(tmp_path)
    (runs / "demo" / "pairs").mkdir(parents=True)  # configs/train-ncnet.yaml reads `data.pairs: demo`
    with pytest.raises(ConfigError, match=f"data.pairs: file://{runs}/demo holds no pairs manifest"):
        load_train_config("ncnet", REPO / "configs" / "train-ncnet.yaml")  # the demo run there, (still) empty
    assert default_train_config("ncnet")["storage"] is None
    assert train_run_url({"storage": None, "run_name": "ncnet-demo"}) == f"file://{runs}/ncnet-demo"


def test_a_bare_run_name_is_the_run_under_the_default_storage(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("MATCHMILL_RUNS", str(runs))
    monkeypatch.chdir(tmp_path)
    assert resolve_run_arg("demo") == f"file://{runs}/demo"  # not there yet: its reader names this URL
    (runs / "photos" / "pairs").mkdir(parents=True)
    (tmp_path / "photos").mkdir()  # `matchmill match photos` ran here: ./photos holds the images, not a run
    assert resolve_run_arg("photos") == f"file://{runs}/photos"
    assert resolve_run_arg("photos/pairs") == f"file://{runs}/photos/pairs"  # not a local path: inside the run
    (tmp_path / "local").mkdir()
    assert resolve_run_arg("local") == f"file://{tmp_path}/local"  # an existing path, no such run
    (runs / "local").mkdir()
    (tmp_path / "local" / "pairs").mkdir()
    (tmp_path / "local" / "pairs" / "_COMMITTED.json").write_text("{}")
    assert resolve_run_arg("local") == f"file://{tmp_path}/local"  # a run here wins over the default storage's
    assert resolve_run_arg("demo2/verify") == f"file://{tmp_path}/demo2/verify"  # no such run: a local path
    (runs / "demo2").mkdir()
    assert resolve_run_arg("demo2/verify") == f"file://{runs}/demo2/verify"  # a path inside a run there
    assert resolve_run_arg("./demo") == f"file://{tmp_path}/demo"  # written as a path: the working directory's
    assert resolve_run_arg("file://./x") == f"file://{tmp_path}/x"
    assert resolve_run_arg("s3://b/runs/x/") == "s3://b/runs/x"
    args = argparse.Namespace(run_url="demo", run_urls=["photos", "s3://b/r"])
    resolve_run_args(args)  # every command's run argument goes through the one rule
    assert (args.run_url, args.run_urls) == (f"file://{runs}/demo", [f"file://{runs}/photos", "s3://b/r"])
