"""A method added in one file, outside matchmill, runs through ``matchmill run`` (matchmill/methods/registry.py).

The toy proposer lives in ``tmp_path/toy_matcher.py`` only; the job names it
``propose.method=toy_matcher:ToyProposer`` and gives its own config key on the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from matchmill.config import ConfigError

from tests.helpers.paths import DEMO_CONFIG, REPO

TOY = textwrap.dedent('''
    """A toy proposer: keypoint i of image 0 <-> keypoint i of image 1, every score ``score``."""
    import numpy as np

    from matchmill.methods.base import Method


    class ToyProposer(Method):
        default_conf = {
            "max_matches": 10,  # keep the first N keypoint pairs
            "score": 0.5,  # the score of every match
        }
        conf_bounds = {"score": "[0, 1]"}

        def __call__(self, feats0, feats1):
            n = min(len(feats0["keypoints"]), len(feats1["keypoints"]), int(self.conf["max_matches"]))
            matches = np.concatenate([feats0["keypoints"][:n], feats1["keypoints"][:n]], axis=1)
            return matches.astype(np.float32), np.full(n, self.conf["score"], np.float32)
''')


@pytest.fixture()
def toy_path(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy_matcher.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(plugins))
    return plugins


def test_plugin_config_errors_are_one_line(toy_path):
    from matchmill.pipeline.config import load_config

    conf = load_config(DEMO_CONFIG, ["propose.method=toy_matcher:ToyProposer", "propose.max_matches=3"])
    assert conf["propose"]["max_matches"] == 3 and conf["propose"]["score"] == 0.5
    cases = {
        "propose.max_matchez=3": "propose.max_matchez",  # a typo of the plugin's own key
        "propose.score=2": "propose.score",  # its conf_bounds
    }
    for extra, named in cases.items():
        with pytest.raises(ConfigError, match=named) as err:
            load_config(DEMO_CONFIG, ["propose.method=toy_matcher:ToyProposer", extra])
        assert "\n" not in str(err.value)
    for method, named in {"no_such_module_xyz:Toy": "cannot import plugin module 'no_such_module_xyz'",
                          "toy_matcher:Missing": "has no class 'Missing'",
                          "toy_matcher:9x": "a plugin method is named"}.items():
        with pytest.raises(ConfigError, match=named) as err:
            load_config(DEMO_CONFIG, [f"propose.method={method}"])
        assert "\n" not in str(err.value) and str(err.value).startswith("propose.method=")


@pytest.mark.ray
def test_plugin_proposer_runs_through_matchmill_run(toy_path, tmp_path, demo_root):
    from matchmill.manifests.commit import read_stage
    from matchmill.manifests.schemas import STATUS_OK

    storage = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_path), os.environ.get("PYTHONPATH", "")]),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "matchmill", "run", str(DEMO_CONFIG), f"storage=file://{storage}",
           f"data.root={demo_root}", "run_name=toy", "pairs.max_pairs_per_scene=3", "extract.resize_max=160",
           "ray.num_cpus=2", "propose.method=toy_matcher:ToyProposer", "propose.max_matches=7",
           "propose.score=0.25", "--until", "propose"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = read_stage(f"file://{storage}/toy", "propose").to_pylist()
    assert len(rows) == 3 and all(r["status"] == STATUS_OK for r in rows)
    for r in rows:
        assert r["num_matches"] == 7
        assert np.allclose(np.asarray(r["scores"], np.float32), 0.25)  # the toy's marker score
