"""Config loading, dotted overrides, validation messages and stage hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from matchmill.pipeline.config import ConfigError, load_config, parse_override, run_url
from matchmill.pipeline.runner import stage_hashes

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_config_loads_with_method_defaults():
    conf = load_config(DEMO)
    assert conf["extract"]["method"] == "sift"
    assert conf["extract"]["max_keypoints"] == 2048  # from SiftExtractor.default_conf
    assert conf["propose"]["ratio"] == 0.9  # from the YAML over MutualNNMatcher's default
    assert conf["pairs"]["min_overlap"] == 0.35


def test_dotted_overrides_parse_yaml_values(tmp_path):
    conf = load_config(DEMO, ["storage=file:///x", f"data.root={tmp_path}", "extract.max_keypoints=500",
                              "verify.h_threshold=3", "ray.progress_bars=true"])
    assert conf["storage"] == "file:///x"
    assert conf["data"]["root"] == str(tmp_path)
    assert conf["extract"]["max_keypoints"] == 500
    assert conf["verify"]["h_threshold"] == 3
    assert run_url(conf) == "file:///x/demo"
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize(
    "override, message",
    [
        ("extract.max_keypoint=5", "extract.max_keypoint: unknown config key"),
        ("verfy.geometry=auto", "verfy: unknown config key"),
        ("extract.method=surf", "extract.method: unknown method 'surf'"),
        ("extract.max_keypoints=many", "extract.max_keypoints: expected int"),
        ("verify.geometry=affine", "verify.geometry"),
        ("propose.actors=0", "propose.actors: must be >= 1"),
        ("data.source=flickr", "data.source"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert message in str(err.value)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_stage_hash_changes_downstream_only():
    base = stage_hashes(load_config(DEMO))
    changed = stage_hashes(load_config(DEMO, ["propose.ratio=0.8"]))
    assert changed["pairs"] == base["pairs"] and changed["extract"] == base["extract"]
    for stage in ("propose", "refine", "verify", "metrics"):
        assert changed[stage] != base[stage]
    # execution settings do not change what is computed
    assert stage_hashes(load_config(DEMO, ["extract.actors=2", "extract.batch_size=1"])) == base
