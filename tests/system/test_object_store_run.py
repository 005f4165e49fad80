"""A whole run on ``s3://``: a real S3-protocol server on loopback (moto) behind a proxy that fails
or delays a tenth of the requests; Ray workers included; resume; a lost feature artifact found;
results equal to ``file://``."""

from __future__ import annotations

import pytest

from matchmill.manifests.commit import check_artifacts, read_commit
from matchmill.manifests.storage import remove_tree
from matchmill.cli import main as cli_main
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG

from tests.helpers.runs import REFERENCE_OVERRIDES, assert_same_results, run_results

pytestmark = pytest.mark.ray

ROWS = {"pairs": 24, "images": 14, "extract": 14, "propose": 24, "refine": 24, "verify": 24}


def test_a_whole_run_on_s3_with_injected_faults_resumes_and_equals_the_file_run(
        tmp_path, demo_root, ray_local, demo_reference, monkeypatch, capsys):
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    s3fs = pytest.importorskip("s3fs")
    from tests.helpers.s3_loopback import FAULTS, LoopbackS3

    with LoopbackS3(fault_rate=0.1, seed=0) as s3:
        s3.create_bucket("runs")
        # set after the test session's Ray started: its workers get the endpoint and credentials only
        # because the run forwards them (storage_remote_args), as a cluster's workers would
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            conf = load_config(DEMO_CONFIG, ["storage=s3://runs/jobs", f"data.root={demo_root}", *REFERENCE_OVERRIDES,
                                             "part_rows=8"])
            first = run_pipeline(conf, until="extract", echo=lambda _: None)
            assert first.run_url == "s3://runs/jobs/demo"
            assert [r.action for r in first.stages] == ["ran"] * 3
            resumed = run_pipeline(conf, echo=lambda _: None)
            actions = {r.stage: r.action for r in resumed.stages}
            assert actions == {"pairs": "skipped", "images": "skipped", "extract": "skipped", "propose": "ran",
                               "refine": "ran", "verify": "ran", "metrics": "ran"}
            # the commit markers count what the workers wrote, not a listing cached before they wrote
            for stage, rows in ROWS.items():
                commit = read_commit(resumed.run_url, stage)
                assert commit.rows == rows and len(commit.parts) >= 1, (stage, commit.rows)
            assert cli_main(["status", "s3://runs/jobs/demo"]) == 0
            status = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
            for stage, rows in ROWS.items():  # `matchmill status` on the bucket: stage, state, rows, failed, ...
                assert status[stage][1:4] == ["committed", str(rows), "0"], status[stage]
            assert_same_results(run_results(resumed.run_url), demo_reference)
            # a feature artifact lost from the bucket is found from one listing and named against its
            # part (its repair by a rerun is pinned on file:// in tests/system/test_faults.py)
            extract = read_commit(resumed.run_url, "extract")
            assert len(extract.artifacts) == 14 and all(key.startswith("artifacts/") for key in extract.artifacts)
            assert check_artifacts(resumed.run_url, "extract", "extract", extract) == {}
            lost = sorted(extract.artifacts)[0]
            remove_tree(f"{resumed.run_url}/{lost}")
            problems = check_artifacts(resumed.run_url, "extract", "extract", extract)
            assert len(problems) == 1 and next(iter(problems.values())).endswith(f"whose artifact {lost} is missing")
            counts = dict(s3.counts)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert all(counts.get(kind, 0) > 0 for kind in FAULTS), counts  # every kind of fault was met, and survived
    print(f"\ns3 run with faults: {counts}")
