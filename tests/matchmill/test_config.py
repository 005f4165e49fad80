"""Config loading, dotted overrides, validation messages and stage hashes."""

from __future__ import annotations

import re

import pytest

from matchmill.cli import main as cli_main
from matchmill.config import ConfigError, parse_override
from matchmill.pipeline.config import load_config, resolve, run_url
from matchmill.pipeline.runner import stage_hashes

from tests.helpers.paths import DEMO_CONFIG as DEMO


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


# --------------------------------------------------------------------------- issue 19: strict values
# Each of these was accepted before (and ran with a wrong or harmful meaning).


@pytest.mark.parametrize("name, rule", [
    ("..", "must not be '.' or '..'"),
    (".", "must not be '.' or '..'"),
    ("", "must not be empty or blank"),
    ("   ", "must not be empty or blank"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    (" a", "whitespace"),
    ("a ", "whitespace"),
    ("a\tb", "control characters"),
    (".hidden", "must not start with '.'"),
    (None, "expected a folder name"),
])
def test_run_name_must_be_one_plain_folder(name, rule):
    with pytest.raises(ConfigError) as err:
        resolve({"run_name": name})
    assert str(err.value).startswith("run_name: ") and rule in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["demo", "_scratch", "run-2024.v2", "a..b", "mine@host"])
def test_plain_run_names_still_pass(name):
    assert run_url(resolve({"run_name": name, "storage": "file:///x"})) == f"file:///x/{name}"


def test_run_name_dotdot_never_touches_the_storage_parent(tmp_path, capsys):
    """Before: ``run_name=..`` ran the pairs stage in the storage's parent and replaced a user's
    ``pairs/`` folder next to ``runs/``. ``--until pairs`` runs no Ray stage."""
    mine = tmp_path / "pairs" / "mine.parquet"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg b.jpg\n")
    code = cli_main(["run", str(DEMO), f"storage=file://{tmp_path}/runs", "run_name=..", "data.source=pairs_file",
                     f"data.pairs_file={listing}", f"data.images_dir={tmp_path}", "--until", "pairs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "run_name: '..' must not be '.' or '..'" in err[0], err
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt", "pairs"]


@pytest.mark.parametrize("override, message", [
    ("verify.max_iters=-5", "verify.max_iters: must be >= 1, got -5"),
    ("verify.max_iters=0", "verify.max_iters: must be >= 1"),
    ("extract.resize_max=-1", "extract.resize_max: must be >= 0, got -1"),
    ("verify.f_threshold=-1", "verify.f_threshold: must be > 0, got -1"),
    ("verify.h_threshold=0", "verify.h_threshold: must be > 0"),
    ("verify.confidence=1.5", "verify.confidence: must be in (0, 1), got 1.5"),
    ("verify.pose_confidence=1", "verify.pose_confidence: must be in (0, 1)"),
    ("verify.ransac_seed=-2", "verify.ransac_seed: must be >= -1"),
    ("verify.h_threshold=.nan", "verify.h_threshold: must be a finite number"),
    ("verify.h_threshold=.inf", "verify.h_threshold: must be a finite number"),
    ("propose.ratio=2", "propose.ratio: must be in [0, 1], got 2"),
    ("propose.min_similarity=-2", "propose.min_similarity: must be in [-1, 1]"),
    ("propose.chunk=0", "propose.chunk: must be >= 1"),
    ("extract.max_keypoints=-1", "extract.max_keypoints: must be >= 0"),
    ("extract.n_octave_layers=0", "extract.n_octave_layers: must be >= 1"),
    ("extract.actors=5000", "extract.actors: must be in [1, 4096], got 5000"),
    ("verify.batch_size=0", "verify.batch_size: must be >= 1"),
    ("propose.feature_cache_mb=-1", "propose.feature_cache_mb: must be >= 0"),
    ("metrics.pose_thresholds=[5, -10]", "metrics.pose_thresholds[1]: must be > 0, got -10"),
    ("pairs.min_overlap=1.5", "pairs.min_overlap: must be in [0, 1]"),
    ("pairs.min_similarity=-3", "pairs.min_similarity: must be in [-1, 1]"),
    ("pairs.max_sampson_sq=0", "pairs.max_sampson_sq: must be > 0"),
    ("seed=-1", "seed: must be >= 0"),
    ("ray.num_cpus=0", "ray.num_cpus: must be > 0"),
    ("data.demo_width=8", "data.demo_width: must be >= 16"),
    ("data.max_image_pixels=0", "data.max_image_pixels: must be >= 1"),
    ("mine.draw=-1", "mine.draw: must be >= 0"),
    ("extract.actors=", "extract.actors: expected a number, got null"),  # before: TypeError traceback
    ("verify.batch_size=null", "verify.batch_size: expected a number, got null"),
    ("part_rows=null", "part_rows: expected a number, got null"),
])
def test_numbers_out_of_their_bounds_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("method, override, message", [
    ("extract.method=pump", "extract.dense_min_scale=0", "extract.dense_min_scale: must be in (0, 1]"),
    ("extract.method=resnet34", "extract.multiple=0", "extract.multiple: must be >= 1"),
    ("propose.method=pump-pyramid", "propose.max_scale=0.5", "propose.max_scale: must be >= 1"),
    ("propose.method=pump-pyramid", "propose.memory_budget_mb=0", "propose.memory_budget_mb: must be > 0"),
    ("propose.method=ncnet", "propose.nc_threshold=1", "propose.nc_threshold: must be in [0, 1)"),
    ("refine.method=patch2pix", "refine.confidence=-0.1", "refine.confidence: must be in [0, 1)"),
    ("refine.method=patch2pix", "refine.feat_channels=[3, 0, 64, 128]", "refine.feat_channels[1]: must be >= 1"),
])
def test_method_keys_are_bounded_by_their_method(method, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [method, override])
    assert message in str(err.value)


@pytest.mark.parametrize("override", [
    "verify.ransac_seed=-1", "propose.min_similarity=-1", "extract.resize_max=0", "extract.resize_max=null",
    "pairs.max_overlap=1.2", "propose.ratio=0", "verify.num_gpus=0", "extract.num_cpus=0.5",
])
def test_documented_special_values_still_pass(override):
    load_config(DEMO, [override])


def test_every_declared_bound_parses_and_names_a_real_key():
    from matchmill.config import parse_bound
    from matchmill.pipeline.config import JOB_BOUNDS, JOB_DEFAULTS
    from matchmill.pipeline.graph import ALL_STAGES
    from matchmill.methods.registry import REGISTRIES, load_method

    for key, bound in JOB_BOUNDS.items():
        parse_bound(bound)
        section, _, sub = key.rpartition(".")
        assert sub in (JOB_DEFAULTS[section] if section else JOB_DEFAULTS), key
    for spec in ALL_STAGES:
        for key, bound in spec.default_bounds().items():
            parse_bound(bound)
            assert key in spec.default_section(), (spec.name, key)
    for stage, registry in REGISTRIES.items():
        for name in registry:
            cls = load_method(stage, name)
            for key, bound in cls.conf_bounds.items():
                parse_bound(bound)
                assert key in cls.default_conf, (stage, name, key)
            load_config(DEMO, [f"{stage}.method={name}"])  # every method's defaults are within its bounds


@pytest.mark.parametrize("storage, message", [
    ("s3:/bucket", "did you mean s3://bucket?"),
    ("gs:bucket/runs", "did you mean gs://bucket/runs?"),
    ("file:relative", "did you mean file://./relative?"),
    ("file:/abs/runs", "did you mean file:///abs/runs?"),
    ("s4://bucket", "unknown protocol 's4'"),
    ("s3://", "has no bucket"),
    (" runs", "whitespace"),
])
def test_storage_urls_that_would_make_a_stray_local_folder_are_refused(storage, message):
    with pytest.raises(ConfigError) as err:
        resolve({"storage": storage})
    assert str(err.value).startswith(f"storage {storage!r}") and message in str(err.value), err.value


def test_storage_tilde_is_the_home_folder_and_relative_paths_still_work(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run_url(resolve({"storage": "~/runs"})) == f"file://{tmp_path}/home/runs/demo"
    assert run_url(resolve({"storage": "file://~/runs"})) == f"file://{tmp_path}/home/runs/demo"
    assert run_url(resolve({"storage": "file://./runs"})) == f"file://{tmp_path}/runs/demo"
    assert run_url(resolve({"storage": "runs"})) == f"file://{tmp_path}/runs/demo"
    assert run_url(resolve({"storage": "simplecache::s3://bucket/runs"})) == "simplecache::s3://bucket/runs/demo"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_job_file_is_refused(tmp_path, text):
    """Before: an empty file ran the demo job with every default."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"config file '.*job\.yaml' is empty"):
        load_config(path)


def test_a_key_given_twice_in_a_job_file_is_refused(tmp_path):
    """Before: the last of two ``max_iters`` won without a word."""
    path = tmp_path / "job.yaml"
    path.write_text("verify:\n  max_iters: 5\n  geometry: auto\n  max_iters: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "key 'max_iters' given twice (lines 2 and 4)" in str(err.value) and "\n" not in str(err.value)
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="key 'seed' given twice"):
        load_config(path)
    with pytest.raises(ConfigError, match="key 'a' given twice"):
        load_config(DEMO, ["pairs.global={a: 1, a: 2}"])
    from matchmill.config import load_yaml  # YAML merge keys may still be overridden

    assert load_yaml("a: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


def test_a_key_given_twice_on_the_command_line_is_refused(capsys, tmp_path):
    code = cli_main(["run", str(DEMO), f"storage=file://{tmp_path}", "verify.max_iters=5", "verify.max_iters=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "verify.max_iters: given twice on the command line" in err[0]
    assert not any(tmp_path.iterdir())
    # a program layering override lists keeps "the last one wins"
    assert load_config(DEMO, ["verify.max_iters=5", "verify.max_iters=7"])["verify"]["max_iters"] == 7


def test_an_actor_pool_the_cluster_cannot_place_is_refused(monkeypatch):
    """Before: ``extract.actors=1000`` on a 2-CPU machine scaled each actor to 0.002 CPU and started
    worker after worker (Ray: "may hang forever"). Checked once Ray is up, embedded or a cluster;
    here against a stubbed ``ray.cluster_resources`` (no Ray is started)."""
    import ray

    from matchmill.pipeline.runtime import ResourceError, check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "cpu_worker": 3.0})
    check_resources(load_config(DEMO, ["extract.actors=2", "propose.actors=4", "propose.num_cpus=0.5"]))
    for overrides, message in (
        (["extract.actors=1000"], "extract.actors=1000 x extract.num_cpus=1 needs 1000 CPU but the Ray cluster has 2; "
                                  "set extract.actors <= 2"),
        (["verify.actors=3"], "verify.actors=3 x verify.num_cpus=1 needs 3 CPU"),
        (["verify.actors=4", "verify.num_cpus=0.1", "verify.resources={cpu_worker: 1}"],
         "verify.actors=4 x verify.resources.cpu_worker=1 needs 4 cpu_worker but the Ray cluster has 3"),
    ):
        with pytest.raises(ResourceError, match=re.escape(message)):
            check_resources(load_config(DEMO, overrides))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    with pytest.raises(ResourceError, match=re.escape("extract.actors=2 x extract.num_gpus=1 needs 2 GPU")):
        check_resources(load_config(DEMO, ["extract.actors=2", "extract.num_gpus=1"]))
