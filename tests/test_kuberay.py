"""The cluster recipes (issue 25, item 8): sweep/cluster/rayjob.yaml against the RayJob CRD's
OpenAPI schema of KubeRay v1.6.2 (vendored in sweep/cluster/schema/), and what the recipe
must hold for the autoscaler to reach the head; gpu_cluster.yaml's start commands and IAM.

The CRD's OpenAPI v3 schema is checked with the `jsonschema` package (installed with Ray)
after the translation Kubernetes itself applies: an object schema that lists properties and
has neither additionalProperties nor x-kubernetes-preserve-unknown-fields accepts no other
field (the API server prunes it; `kubectl apply` with the default strict field validation
refuses it), and `nullable` admits null. CEL rules (x-kubernetes-validations) and formats are
not evaluated here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "sweep" / "cluster"
SCHEMA = CLUSTER / "schema" / "rayjob-crd-v1.6.2.yaml"


def structural(schema):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON Schema with Kubernetes' field rules."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) if k not in ("enum", "required", "default") else v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: structural(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@pytest.fixture(scope="module")
def validator():
    schema = structural(yaml.safe_load(SCHEMA.read_text()))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


@pytest.fixture(scope="module")
def docs():
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())}


def errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_rayjob_matches_the_crd_schema(validator, docs):
    assert errors(validator, docs["RayJob"]) == []


def test_the_validator_refuses_what_kubernetes_refuses(validator, docs):
    """Unknown fields, a wrong enum value, a wrong type, a missing required field."""
    job = docs["RayJob"]
    cases = []
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["authOption"] = bad["spec"]["rayClusterSpec"].pop("authOptions")
    cases.append((bad, "authOption"))
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    cases.append((bad, "'tokens' is not one of"))
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    cases.append((bad, "is not of type 'integer'"))
    bad = copy.deepcopy(job)
    del bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    cases.append((bad, "'name' is a required property"))
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"][0]["efect"] = "x"
    cases.append((bad, "efect"))
    for doc, needle in cases:
        assert any(needle in e for e in errors(validator, doc)), (needle, errors(validator, doc))


def test_autoscaler_can_reach_the_head(docs):
    """KubeRay >= 1.6 passes the token to the autoscaler, the submitter and the operator only
    with authOptions; the recipe says so in its header."""
    text = (CLUSTER / "rayjob.yaml").read_text()
    assert "KubeRay operator\n# >= 1.6" in text
    spec = docs["RayJob"]["spec"]
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "neuroreg-ray-token"}
    assert "auth_token=" in text  # the Secret's key KubeRay reads
    assert "RAY_AUTH_TOKEN" not in json.dumps(spec)  # KubeRay injects it; a hand-set one would win
    assert spec["shutdownAfterJobFinishes"] is True and spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True


def _pods(spec):
    rc = spec["rayClusterSpec"]
    return [("head", rc["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in rc["workerGroupSpecs"]]


def test_pods_have_shared_memory_data_and_gpu_tolerations(docs):
    spec = docs["RayJob"]["spec"]
    for name, pod in _pods(spec):
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", name
        claim = vols[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
        assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"], name
        gpus = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        if gpus:
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"], name
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_tables_are_gathered_to_the_sweeps_s3_storage(docs):
    entry = docs["RayJob"]["spec"]["entrypoint"]
    storage = entry.split("--storage ")[1].split()[0]
    results = entry.split("--results ")[1].split()[0]
    assert storage.startswith("s3://") and storage.endswith("/sweeps")
    bucket_prefix = storage.rsplit("/", 1)[0]
    assert f"copy_files('{results}/tables', '{bucket_prefix}/tables')" in entry
    assert "rc=$?;" in entry and "exit $rc" in entry  # copied also when a trial failed, exit code kept


def test_gpu_cluster_start_commands_and_pass_role():
    cfg = yaml.safe_load((CLUSTER / "gpu_cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all(c.startswith("ulimit -n 65536;") for c in start), cfg[key]
    worker_profile = cfg["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    role = worker_profile.split("instance-profile/")[1]
    policy = json.loads((CLUSTER / "head-iam-policy.json").read_text())
    passes = [s for s in policy["Statement"] if s["Action"] == "iam:PassRole"]
    assert passes and passes[0]["Resource"].endswith(f":role/{role}")
    assert "head-iam-policy.json" in (CLUSTER / "gpu_cluster.yaml").read_text()
