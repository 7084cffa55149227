"""deploy/kuberay-rayjob.yaml, checked offline against KubeRay's documented RayJob fields.

No KubeRay package ships the CRD schema for Python, so the fields below are those of
KubeRay's API types (ray.io/v1 ``RayJobSpec``, ``RayClusterSpec``, ``HeadGroupSpec``,
``WorkerGroupSpec``). The entrypoint must parse as a fedray command that resumes from
a volume the head mounts, and the job must clean up and retry.
"""

import shlex

import pytest
import yaml

from tests.conftest import ROOT

MANIFEST = ROOT / "deploy" / "kuberay-rayjob.yaml"
RAYJOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
    "schedule",
}
SUBMITTER_CONFIG = {"backoffLimit"}
CLUSTER_SPEC = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
}


def _docs():
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_rayjob_uses_only_documented_fields_with_the_right_types():
    job = _docs()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert set(spec["submitterConfig"]) <= SUBMITTER_CONFIG
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= CLUSTER_SPEC and {"headGroupSpec"} <= set(cluster)
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP and {"groupName", "rayStartParams", "template"} <= set(
            group
        )
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in cluster["workerGroupSpecs"]
    ]:
        assert all(isinstance(v, str) for v in params.values())  # map[string]string
    for key in ("backoffLimit", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert isinstance(spec[key], int) and spec[key] >= 0, key


def test_the_job_cleans_up_retries_and_resumes_from_its_volume():
    ray = pytest.importorskip("ray")
    from fedray.cli import _parser

    docs = _docs()
    spec = docs["RayJob"]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "fedray"
    args = _parser().parse_args(argv[1:])  # a command fedray accepts
    assert args.command == "run" and args.resume_if_exists and args.address is None
    assert (ROOT / args.config).is_file()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the same Ray as the driver's
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for c in head["containers"] for m in c["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
    (volume,) = [n for n, path in mounts.items() if args.out.startswith(path + "/")]
    assert claims[volume] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    images = {c["image"] for c in head["containers"]} | {
        c["image"] for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
    }
    assert images == {f"fedray:{ray.__version__}-py311-cpu"}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-cpu" in dockerfile
    assert ".ray-token" in (ROOT / ".dockerignore").read_text().splitlines()  # never baked in
