"""deploy/: every manifest parses and carries what a KubeRay cluster needs; the job configs and
entrypoints are valid matchmill inputs; the Dockerfile pins and installs what the package needs;
the deploy helpers and the per-stage custom Ray resources work."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import time
import tomllib
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from tests.helpers.paths import REPO

DEPLOY = REPO / "deploy"
IMAGE_HOME = "/home/ray/matchmill"  # WORKDIR of deploy/Dockerfile: the repository inside the image
SECRET = "matchmill-object-store"
OBJECT_STORES = ("s3://", "gs://", "gcs://", "az://", "abfs://")
GPU = "nvidia.com/gpu"


# ----------------------------------------------------------------------------- helpers


def manifests() -> dict[str, list[dict]]:
    """Kubernetes documents of every YAML under deploy/ except the pipeline job configs."""
    out = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "configs" in path.relative_to(DEPLOY).parts:
            continue
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def one(name: str) -> dict:
    docs = manifests()[name]
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    return docs[0]


def cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec: the cluster itself and the ones embedded in the jobs."""
    return {
        "raycluster": one("raycluster.yaml")["spec"],
        "rayjob": one("rayjob.yaml")["spec"]["rayClusterSpec"],
        "raycronjob": one("raycronjob.yaml")["spec"]["jobTemplate"]["rayClusterSpec"],
    }


def groups(spec: dict) -> dict[str, dict]:
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def pod_containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", []))


def all_values(node, key: str):
    """Every value stored under ``key`` anywhere in a nested YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from all_values(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from all_values(item, key)


def custom_resources(group: dict) -> dict[str, float]:
    """The custom resources a worker group advertises through rayStartParams (KubeRay's quoted JSON)."""
    text = group.get("rayStartParams", {}).get("resources")
    if text is None:
        return {}
    return json.loads(json.loads(text))  # '"{\"cpu_worker\": 1000}"' -> str -> dict


def in_repo(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_HOME + "/"), f"{image_path} is not under the image's {IMAGE_HOME}"
    return REPO / image_path[len(IMAGE_HOME) + 1 :]


def script_commands(entrypoint: str) -> list[list[str]]:
    """Simple commands of an entrypoint: ``cmd`` or ``bash -c '<a>; <b>; ...'``."""
    argv = shlex.split(entrypoint)
    if argv[:2] == ["bash", "-c"]:
        assert len(argv) == 3, f"bash -c takes one script argument, got {argv[2:]}"
        return [shlex.split(c) for c in re.split(r";|&&|\n", argv[2]) if c.strip()]
    return [argv]


def matchmill_commands(entrypoint: str):
    from matchmill.cli import build_parser

    parsed = []
    for argv in script_commands(entrypoint):
        if argv[0] == "matchmill":
            parsed.append(build_parser().parse_args(argv[1:]))  # strict: an unknown option fails here
    assert parsed, f"no matchmill command in {entrypoint!r}"
    return parsed


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def docker_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)", dockerfile(), re.M)
    assert match, f"deploy/Dockerfile: no ARG {name}=..."
    return match.group(1)


# ----------------------------------------------------------------------------- manifests


def test_every_manifest_parses_with_api_version_kind_and_name():
    found = manifests()
    assert {"raycluster.yaml", "rayjob.yaml", "raycronjob.yaml"} <= set(found)
    kinds = {}
    for name, docs in found.items():
        for doc in docs:
            assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str), name
            assert doc["metadata"]["name"], name
            kinds[doc["kind"]] = doc["apiVersion"]
    assert kinds["RayCluster"] == kinds["RayJob"] == kinds["RayCronJob"] == "ray.io/v1"


@pytest.mark.parametrize("which", ["raycluster", "rayjob", "raycronjob"])
def test_cluster_has_head_gpu_group_and_cpu_group(which):
    spec = cluster_specs()[which]
    assert spec["rayVersion"] == docker_arg("RAY_VERSION"), "rayVersion must be the image's Ray version"
    g = groups(spec)
    assert set(g) == {"head", "gpu", "cpu"}
    for name, group in g.items():
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{which}/{name}: rayStartParams values must be strings"
    assert g["head"]["rayStartParams"]["num-cpus"] == "0", "the head runs the driver only"

    gpu_res = g["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu_res["limits"][GPU]) >= 1
    assert gpu_res["requests"].get(GPU, gpu_res["limits"][GPU]) == gpu_res["limits"][GPU]
    assert g["gpu"]["rayStartParams"].get("num-gpus", gpu_res["limits"][GPU]) == str(gpu_res["limits"][GPU])
    assert any(t.get("key") == GPU for t in g["gpu"]["template"]["spec"].get("tolerations", []))
    for name in ("head", "cpu"):
        for c in pod_containers(g[name]["template"]["spec"]):
            assert GPU not in str(c.get("resources", {})), f"{which}/{name} must not ask for GPUs"
    assert custom_resources(g["cpu"]) and not custom_resources(g["gpu"]), "only the CPU group carries the RANSAC tag"
    for name in ("gpu", "cpu"):  # runs check their resources at start: groups must exist from the start
        assert 1 <= g[name]["minReplicas"] <= g[name]["replicas"] <= g[name]["maxReplicas"]


def test_job_clusters_are_the_raycluster_spec():
    """Same groups, images, start parameters and pod resources everywhere (replicas and the
    benchmark's data volume may differ)."""

    def shape(spec: dict) -> dict:
        out = {"rayVersion": spec["rayVersion"]}
        for name, group in groups(spec).items():
            containers = group["template"]["spec"]["containers"]
            out[name] = {
                "rayStartParams": group["rayStartParams"],
                "containers": [(c["name"], c["image"], c["resources"], c.get("envFrom")) for c in containers],
            }
        return out

    specs = cluster_specs()
    assert specs["rayjob"] == specs["raycluster"]
    assert shape(specs["raycronjob"]) == shape(specs["raycluster"])


def test_one_pinned_image_for_every_pod_and_the_submitter():
    images = {img for docs in manifests().values() for doc in docs for img in all_values(doc, "image")}
    assert len(images) == 1, f"expected one image everywhere, got {sorted(images)}"
    image = images.pop()
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag and tag not in ("", "latest"), f"image {image!r} must be pinned by a tag"


def test_credentials_come_from_the_secret_only():
    for name, docs in manifests().items():
        for doc in docs:
            pods = [t["spec"] for t in all_values(doc, "template") if isinstance(t, dict) and "spec" in t]
            pods = [p for p in pods if "containers" in p]
            assert pods, name
            for pod in pods:
                for c in pod_containers(pod):
                    if c["name"] == "ray-job-submitter":
                        continue  # only runs `ray job submit`: no storage access
                    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
                    assert refs == [SECRET], f"{name}/{c['name']}: credentials must come from Secret {SECRET}"
                    for env in c.get("env", []):
                        assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]), \
                            f"{name}/{c['name']}: {env['name']} must come from the Secret, not a literal"


# ----------------------------------------------------------------------------- jobs and configs


def test_cluster_job_config_validates_and_places_stages():
    from matchmill.pipeline.config import load_config

    conf = load_config(DEPLOY / "configs" / "cluster.yaml")
    assert conf["storage"].startswith(OBJECT_STORES), f"storage {conf['storage']!r} is not an object store"
    assert conf["data"]["pairs_file"].startswith(OBJECT_STORES) and conf["data"]["images_dir"].startswith(OBJECT_STORES)
    g = groups(cluster_specs()["raycluster"])
    gpu_pod = g["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = g["gpu"]["replicas"] * int(gpu_pod[GPU])
    for stage in ("extract", "propose", "refine"):
        assert conf[stage]["num_gpus"] >= 1, f"{stage} must run on the GPU group"
        assert conf[stage]["actors"] * conf[stage]["num_gpus"] <= gpus
        assert conf[stage]["num_cpus"] <= float(gpu_pod["cpu"])
        for key in ("weights",):
            if conf[stage].get(key):
                assert conf[stage][key].startswith(OBJECT_STORES), f"{stage}.{key} must be on object storage"
    verify = conf["verify"]
    assert verify["num_gpus"] == 0
    offered = custom_resources(g["cpu"])
    assert verify["resources"] and set(verify["resources"]) <= set(offered), "verify must be pinned to the CPU group"
    cpu_pod = g["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert verify["actors"] * verify["num_cpus"] <= g["cpu"]["replicas"] * float(cpu_pod["cpu"])


def test_rayjob_entrypoint_runs_the_cluster_config():
    from matchmill.pipeline.config import load_config

    job = one("rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] >= 1  # retries resume the run
    (args,) = matchmill_commands(job["entrypoint"])
    assert args.command == "run"
    conf = load_config(in_repo(args.config), args.overrides)
    assert conf["storage"].startswith(OBJECT_STORES)


CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def is_weekly(schedule: str) -> bool:
    """A 5-field cron line that fires once a week: fixed minute, hour and weekday, any day and month."""
    fields = schedule.split()
    if len(fields) != 5:
        return False
    for value, (lo, hi) in zip(fields, CRON_FIELDS):
        if value != "*" and not (value.isdigit() and lo <= int(value) <= hi):
            return False
    minute, hour, dom, month, dow = fields
    return "*" not in (minute, hour, dow) and dom == "*" and month == "*"


def test_weekly_schedule_check_rejects_other_schedules():
    assert is_weekly("0 3 * * 1") and is_weekly("30 23 * * 0")
    for bad in ("0 3 * * *", "* 3 * * 1", "0 3 1 * 1", "0 24 * * 1", "0 3 * * 8", "0 3 * 1", "@weekly x"):
        assert not is_weekly(bad), bad


def test_raycronjob_is_weekly_and_runs_bench_then_report():
    from matchmill.evaluation.benchmarks.method_config import method_config
    from matchmill.methods.presets import select_methods

    cron = one("raycronjob.yaml")["spec"]
    assert is_weekly(cron["schedule"]), f"schedule {cron['schedule']!r} is not a weekly 5-field cron line"
    job = cron["jobTemplate"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job.get("backoffLimit", 0) == 0, "a retry would append the same week to the history twice"
    commands = matchmill_commands(job["entrypoint"])
    benches = [a for a in commands if a.command == "bench"]
    reports = [a for a in commands if a.command == "report"]
    assert benches and reports and commands.index(reports[0]) > commands.index(benches[-1])
    assert any(r.fail_on_regression for r in reports), "the job must fail when a metric regressed"
    for b in benches:
        assert b.history == reports[0].history_url and all(r.history_url == b.history for r in reports)
        assert b.out.startswith(OBJECT_STORES) and b.history.startswith(OBJECT_STORES)
        methods = select_methods(b.methods.split(","), include_baseline=not b.no_sift)
        assert {"sift", "patch2pix"} <= set(methods)
        assert any(o.startswith("patch2pix:refine.weights=$") for o in b.overrides), "newest checkpoint not passed"
        for method in methods:  # the full pipeline config of every method validates
            conf = method_config(method, b.out + "/pairs/x.parquet", b.out, base_config=str(in_repo(b.config)),
                                 resize=b.resize, overrides=list(b.overrides))
            assert conf["verify"]["resources"] == {"cpu_worker": 1}
            assert conf["extract"]["num_gpus"] >= 1
    for r in reports:
        assert r.out.startswith(OBJECT_STORES)
    scripts = [argv for argv in script_commands(job["entrypoint"]) if argv[0] == "python"]
    scripts += [c["command"] for c in all_values(job["rayClusterSpec"], "initContainers") for c in c]
    assert scripts
    for argv in scripts:
        assert in_repo(argv[1]).is_file(), f"{argv[1]} is not in the repository (so not in the image)"


def test_bench_data_is_on_every_pod_of_the_cron_cluster():
    spec = cluster_specs()["raycronjob"]
    (bench,) = [a for a in matchmill_commands(one("raycronjob.yaml")["spec"]["jobTemplate"]["entrypoint"])
                if a.command == "bench"]
    for name, group in groups(spec).items():
        pod = group["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["command"][-1] == bench.root, f"{name}: the benchmark root must be fetched on every pod"
        mounts = {m["mountPath"] for c in pod_containers(pod) for m in c.get("volumeMounts", [])}
        assert any(bench.root.startswith(m + "/") for m in mounts), name


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_pins_base_and_torch_and_installs_the_package():
    text = dockerfile()
    base = docker_arg("RAY_IMAGE")
    assert re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311(-\w+)?", base), base
    assert base.split(":")[1].startswith(docker_arg("RAY_VERSION") + "-")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pin == f"torch=={docker_arg('TORCH_VERSION')}"
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    assert re.search(r'pip install "ray\[data,train\]==\$\{RAY_VERSION\}" "\.\[s3\]"', text)
    assert f"WORKDIR {IMAGE_HOME}" in text
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+)", text, re.M)
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    for package in pyproject["tool"]["setuptools"]["packages"]:
        top = package.split(".")[0]
        assert f"{top}/" in copied, f"package folder {top}/ is not copied into the image"
    assert "deploy/" in copied and "configs/" in copied


# ----------------------------------------------------------------------------- helpers in deploy/


def test_newest_checkpoint_picks_latest_modification(tmp_path, capsys):
    module = load_script("newest_checkpoint")
    for i, name in enumerate(["b/epoch-1.safetensors", "a/epoch-2.safetensors", "z/notes.txt"]):
        path = tmp_path / name
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_700_000_000 + i * 100, 1_700_000_000 + i * 100))
    assert module.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"file://{tmp_path}/a/epoch-2.safetensors"
    os.utime(tmp_path / "b/epoch-1.safetensors", (1_800_000_000, 1_800_000_000))
    assert module.newest_checkpoint(f"file://{tmp_path}") == f"file://{tmp_path}/b/epoch-1.safetensors"
    assert module.main([str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert module.main([str(tmp_path / "z")]) == 2
    assert "no *.safetensors file" in capsys.readouterr().err


def test_sync_data_copies_a_tree_and_resumes(tmp_path):
    module = load_script("sync_data")
    src = tmp_path / "src"
    (src / "v_x").mkdir(parents=True)
    (src / "v_x" / "1.ppm").write_bytes(b"P6 1 1 255 abc")
    (src / "v_x" / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1\n")
    dest = tmp_path / "data" / "hpatches"
    assert module.sync_folder(f"file://{src}", dest) == (2, 14 + 18)
    assert (dest / "v_x" / "H_1_2").read_text() == (src / "v_x" / "H_1_2").read_text()
    (dest / "v_x" / "1.ppm").write_bytes(b"stale!")  # wrong size: copied again
    module.sync_folder(str(src), dest)
    assert (dest / "v_x" / "1.ppm").read_bytes() == b"P6 1 1 255 abc"
    assert module.main([str(tmp_path / "nope"), str(dest)]) == 2


def test_weights_load_from_an_object_store_url():
    import fsspec
    import torch
    from safetensors.torch import save

    from matchmill.models.resnet import load_weights_file

    fs = fsspec.filesystem("memory")
    fs.pipe("/deploy-test/ckpt/w.safetensors", save({"w": torch.arange(3.0)}))
    state = load_weights_file("memory://deploy-test/ckpt/w.safetensors")
    assert torch.equal(state["w"], torch.arange(3.0))
    fs.pipe("/deploy-test/ckpt/bad.safetensors", b"junk")
    with pytest.raises(ValueError, match="memory://deploy-test/ckpt/bad.safetensors"):
        load_weights_file("memory://deploy-test/ckpt/bad.safetensors")
    with pytest.raises(FileNotFoundError, match="memory://deploy-test/ckpt/none.safetensors"):
        load_weights_file("memory://deploy-test/ckpt/none.safetensors")


# ----------------------------------------------------------------------------- stage resources


def test_resources_is_an_execution_key_and_is_validated():
    from matchmill.config import ConfigError
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.runner import stage_hashes

    plain = load_config(None)
    pinned = load_config(None, ["verify.resources.cpu_worker=1", "extract.resources={accelerator_a100: 0.5}"])
    assert pinned["verify"]["resources"] == {"cpu_worker": 1} and plain["verify"]["resources"] is None
    assert stage_hashes(plain) == stage_hashes(pinned)  # where a stage runs never invalidates its results
    for bad, msg in (("verify.resources=4", "expected a mapping"), ("verify.resources.cpu_worker=-1", ">= 0"),
                     ("refine.resources.GPU=1", "num_gpus"), ("verify.resources.x=yes", "number")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config(None, [bad])


@pytest.mark.ray
def test_missing_custom_resource_fails_fast(ray_local):
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.runtime import ResourceError, check_resources

    check_resources(load_config(None))
    pinned = load_config(None, ["verify.resources.cpu_worker=1"])
    with pytest.raises(ResourceError, match=r"verify\.resources\.cpu_worker=1 but the Ray cluster has 0"):
        check_resources(pinned)
    start = time.monotonic()  # joining a cluster: wait a while for workers to register, then fail
    with pytest.raises(ResourceError, match="cpu_worker"):
        check_resources(pinned, wait_seconds=1.0)
    assert time.monotonic() - start >= 1.0


class ResourceProbe:
    """A stage actor that writes the Ray resources it was given into the ``error`` column."""

    def __init__(self, conf=None, run_url=None, config_hash=None):
        import ray

        self.assigned = json.dumps(sorted(ray.get_runtime_context().get_assigned_resources()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.set_column(batch.schema.get_field_index("error"), "error",
                                pa.array([self.assigned] * batch.num_rows, pa.string()))


@pytest.mark.ray
@pytest.mark.parametrize("resources", [None, {"node:__internal_head__": 0.001}])
def test_stage_actors_get_the_configured_custom_resources(ray_local, tmp_path, resources):
    import ray.cloudpickle

    from matchmill.manifests.commit import read_stage
    from matchmill.manifests.schemas import IMAGES
    from matchmill.manifests.storage import write_manifest
    from matchmill.pipeline.executor import SegmentInput, StagePlan, run_segment
    from matchmill.pipeline.graph import StageSpec

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not on the workers' path
    rows = [{"image_id": f"im{i}", "scene": "s", "path": f"/x/{i}.png", "crop": None, "status": "ok", "error": None}
            for i in range(3)]
    source = f"file://{tmp_path}/images/part-00000.parquet"
    write_manifest(pa.Table.from_pylist(rows, schema=IMAGES), source, "images")
    conf = {"images": {"actors": 1, "num_cpus": 0.5, "num_gpus": 0.0, "batch_size": 2, "resources": resources},
            "part_rows": 8}
    spec = StageSpec("images", "image_id", "images", (), (), "ray", ResourceProbe)  # writes IMAGES rows to probe/
    plan = StagePlan(spec, 0, f"file://{tmp_path}/probe", "hash", [], cpus=0.5, stateless=False)
    run_segment([plan], [SegmentInput(0, "images", [source])], conf, f"file://{tmp_path}")
    out = read_stage(f"file://{tmp_path}", "probe", "images")
    assert sorted(out.column("image_id").to_pylist()) == ["im0", "im1", "im2"]
    for assigned in set(out.column("error").to_pylist()):
        assert ("node:__internal_head__" in json.loads(assigned)) == bool(resources), assigned
