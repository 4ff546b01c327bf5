"""Kubernetes manifests, checked offline.

- KubeRay kinds (RayCluster, RayJob) against the CRDs' openAPIV3Schema (../shared/k8s-crds), with
  unknown fields rejected as the API server's strict field validation does.
- Core kinds with the `kubernetes-validate` package's schemas when installed, else their key fields.
- PodMonitors: key fields, and their ports exist on the pods they select.
- Which pod mounts which volume: the weights only where party 0 runs, the client's data and the
  results only where party 1 runs (or the head), nothing on the dealer's pods.
- RayJob entrypoints name job modules that exist and whose parsers accept the arguments; the
  sweep ConfigMap is a valid SweepConfig.
- The Grafana ConfigMap is exactly what the generator makes from dashboards/*.json.
- `kubectl kustomize` renders the cpu and gpu overlays (the gpu one with a GPU per worker pod).
- The Dockerfile installs with scripts/install.sh on a Ray 2.60 image.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from mpcformer.observability.k8s_configmap import render_configmap

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
BASE_FILES = [p for p in sorted((K8S / "base").glob("*.yaml")) if p.name != "kustomization.yaml"]
KUBECTL = shutil.which("kubectl")


def _docs(paths) -> list[dict]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def _render(overlay: str) -> list[dict]:
    return copy.deepcopy(_rendered(overlay))


@functools.lru_cache(maxsize=None)
def _rendered(overlay: str) -> list[dict]:
    done = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _manifests() -> list[dict]:
    """What gets applied: the rendered overlays when kubectl is here, else the base files."""
    if KUBECTL is None:
        return _docs(BASE_FILES)
    return _render("cpu") + _render("gpu")


def _of_kind(docs, kind) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


# ------------------------------------------------------------------------------- KubeRay CRDs
def _strict(schema):
    """Reject unknown fields wherever the CRD lists the properties (the API server prunes or, with
    strict field validation, refuses them; jsonschema alone would accept typos)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (../shared is absent on this machine)")
    return _load_crd_validator(path)


@functools.lru_cache(maxsize=None)
def _load_crd_validator(path: Path) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB each
    crd = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_kinds_match_the_crd_schema(kind):
    validator = _crd_validator(kind)
    docs = _of_kind(_manifests(), kind)
    assert docs, f"no {kind} manifests"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{kind} {doc['metadata']['name']}:\n" + "\n".join(errors[:10])


def test_the_crd_check_catches_typos_and_bad_types():
    validator = _crd_validator("RayJob")
    job = copy.deepcopy(_of_kind(_docs(BASE_FILES), "RayJob")[0])
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert not validator.is_valid(job)
    job = copy.deepcopy(_of_kind(_docs(BASE_FILES), "RayJob")[0])
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "three"
    assert not validator.is_valid(job)


# ------------------------------------------------------------------------------- core kinds
_KEY_FIELDS = {  # used when the kubernetes-validate package is not installed
    "Namespace": {"required": ["metadata"], "properties": {"metadata": {"required": ["name"]}}},
    "ConfigMap": {"required": ["metadata", "data"], "properties": {
        "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "PersistentVolumeClaim": {"required": ["metadata", "spec"], "properties": {"spec": {
        "required": ["accessModes", "resources"],
        "properties": {"accessModes": {"type": "array", "items": {
            "enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}}}}}},
    "NetworkPolicy": {"required": ["metadata", "spec"], "properties": {"spec": {
        "required": ["podSelector", "policyTypes"],
        "properties": {"policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}}}}}},
}


@pytest.mark.parametrize("kind", sorted(_KEY_FIELDS))
def test_core_kinds_are_valid(kind):
    docs = _of_kind(_manifests(), kind)
    assert docs, f"no {kind} manifests"
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    for doc in docs:
        assert doc["apiVersion"] in ("v1", "networking.k8s.io/v1") and doc["metadata"]["name"]
        if kubernetes_validate is not None:
            kubernetes_validate.validate(doc, "1.32.0", strict=True)  # raises on any schema error
        else:
            jsonschema.validate(doc, _KEY_FIELDS[kind])


_POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {"type": "object", "required": ["matchLabels"],
                             "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"}, "interval": {"type": "string"},
                        "relabelings": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False,
                            "properties": {
                                "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep",
                                                    "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"]},
                                "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                "targetLabel": {"type": "string"}, "regex": {"type": "string"},
                                "replacement": {"type": "string"}, "separator": {"type": "string"}}}},
                    }}},
            },
        },
    },
}


def _ray_pod_templates(docs):
    """(node type, pod template) of every Ray head and worker in RayClusters and RayJobs."""
    for doc in docs:
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        yield "head", spec["headGroupSpec"]
        for group in spec["workerGroupSpecs"]:
            yield "worker", group


def test_pod_monitors_select_ray_pods_and_their_metrics_ports():
    docs = _manifests()
    monitors = _of_kind(docs, "PodMonitor")
    assert {m["spec"]["selector"]["matchLabels"]["ray.io/node-type"] for m in monitors} == {"head", "worker"}
    for monitor in monitors:
        jsonschema.validate(monitor, _POD_MONITOR)
        node_type = monitor["spec"]["selector"]["matchLabels"]["ray.io/node-type"]
        wanted = {k: v for k, v in monitor["spec"]["selector"]["matchLabels"].items() if not k.startswith("ray.io/")}
        selected = [g for t, g in _ray_pod_templates(docs) if t == node_type
                    and wanted.items() <= g["template"]["metadata"]["labels"].items()]
        assert selected, f"{monitor['metadata']['name']} selects no Ray pod"
        for group in selected:
            ports = {p["name"] for c in group["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, f"{monitor['metadata']['name']}: no port {endpoint['port']} on {node_type}"


def test_ray_metrics_port_is_exported_and_exposed_everywhere():
    for node_type, group in _ray_pod_templates(_manifests()):
        assert group["rayStartParams"]["metrics-export-port"] == "8080", node_type
        ports = {p["name"]: p["containerPort"] for c in group["template"]["spec"]["containers"] for p in c["ports"]}
        assert ports.get("metrics") == 8080, node_type


# ------------------------------------------------------------------------------- RayJobs
def _entrypoint(job: dict) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


def test_rayjob_entrypoints_name_existing_job_modules_with_valid_arguments():
    jobs = {doc["metadata"]["name"]: doc for doc in _of_kind(_manifests(), "RayJob")}
    modules = set()
    for name, job in jobs.items():
        argv = _entrypoint(job)
        assert argv[:2] == ["python", "-m"], name
        module = argv[2]
        modules.add(module)
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        parser = argparse.ArgumentParser(prog=module, exit_on_error=False)
        importlib.import_module(module).add_arguments(parser)
        parser.parse_args(argv[3:])  # raises on an unknown or malformed argument
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MPCFORMER_METRICS_BACKEND"] == "ray"
    assert modules == {"mpcformer.jobs.infer", "mpcformer.jobs.sweep"}


def test_sweep_configmap_is_a_valid_sweep_config(tmp_path):
    from mpcformer.config import build_config
    from mpcformer.sweep import SweepConfig

    configmap = next(d for d in _docs(BASE_FILES) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mpcformer-sweep")
    sweep = build_config(SweepConfig, yaml.safe_load(configmap["data"]["sweep.yaml"]), source="k8s sweep ConfigMap")
    assert sweep.storage_path.startswith("/results")
    job = next(d for d in _docs(BASE_FILES) if d["kind"] == "RayJob" and d["metadata"]["name"] == "mpcformer-sweep")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounted = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    config_volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == "mpcformer-sweep")
    config_path = _entrypoint(job)[_entrypoint(job).index("--config") + 1]
    assert config_path == f"{mounted[config_volume['name']]}/sweep.yaml"


def test_mpc_worker_pods_fit_two_parties_and_the_dealer_apart():
    cluster = _of_kind(_docs(BASE_FILES), "RayCluster")[0]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    infer = next(d for d in _docs(BASE_FILES) if d["kind"] == "RayJob" and d["metadata"]["name"] == "mpcformer-infer")
    for spec in (cluster["spec"], infer["spec"]["rayClusterSpec"]):
        assert sum(g["replicas"] for g in spec["workerGroupSpecs"]) >= 3


# ------------------------------------------------------------------------------- who mounts what
_CLAIMS = {"mpcformer-models": "models", "mpcformer-client-data": "client data", "mpcformer-results": "results"}


def _pods(doc: dict) -> list[tuple[str, set[str], set[str]]]:
    """(group name, custom Ray resources it offers, volumes its containers mount by claim) per pod template."""
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    pods = []
    for name, group in [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounted = {_CLAIMS[claims[m["name"]]] for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] in claims}
        offered = set(json.loads(json.loads(group["rayStartParams"]["resources"]))) if "resources" in group["rayStartParams"] else set()
        pods.append((name, offered, mounted))
    return pods


def test_each_role_mounts_only_its_own_volumes():
    """Every RayJob and RayCluster: the owner's weights only on pods offering mpc_owner (party 0),
    the client's data and the results only on pods offering mpc_client (party 1) or the head (the
    driver: run.json, status.json), the dealer's pods nothing; a job without a client mounts no client data."""
    from mpcformer.cluster.config import ROLE_RESOURCES

    owner, client, dealer = ROLE_RESOURCES[0], ROLE_RESOURCES[1], ROLE_RESOURCES["dealer"]
    for doc in _of_kind(_manifests(), "RayCluster") + _of_kind(_manifests(), "RayJob"):
        name, pods = doc["metadata"]["name"], _pods(doc)
        with_client = any("client data" in mounted for _, _, mounted in pods)
        for group, offered, mounted in pods:
            where = f"{doc['kind']} {name}, group {group} (offers {sorted(offered)}, mounts {sorted(mounted)})"
            assert len(offered) <= 1, where
            if "client data" in mounted:
                assert offered == {client}, where
            if "models" in mounted and with_client:
                assert offered == {owner}, where
            if "results" in mounted and with_client:
                assert group == "head" or offered == {client}, where
            if offered == {dealer}:
                assert not mounted, where
        if with_client:  # an MPC cluster: one worker group per role, and the job asks for them
            assert sorted(o for _, offered, _ in pods for o in offered) == sorted([owner, client, dealer]), name
            if doc["kind"] == "RayJob":
                assert "group.role_resources=true" in _entrypoint(doc), name


def _mount_paths(group: dict) -> list[tuple[str, bool]]:
    """(mount path, writable) of every volume a pod template's containers mount."""
    return [(m["mountPath"], not m.get("readOnly", False))
            for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]


def _reaches(group: dict, path: str, write: bool = False) -> bool:
    return any(path == mount or path.startswith(mount.rstrip("/") + "/")
               for mount, writable in _mount_paths(group) if writable or not write)


def _role_groups(job: dict) -> dict[str, dict]:
    """The head and each worker group of a RayJob, by the role its custom resource names."""
    from mpcformer.cluster.config import ROLE_RESOURCES

    roles = {ROLE_RESOURCES[0]: "owner", ROLE_RESOURCES[1]: "client", ROLE_RESOURCES["dealer"]: "dealer"}
    spec = job["spec"]["rayClusterSpec"]
    groups = {"head": spec["headGroupSpec"]}
    for group in spec["workerGroupSpecs"]:
        offered = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
        groups[roles[next(iter(offered))] if offered else group["groupName"]] = group
    return groups


@pytest.mark.skipif(KUBECTL is None, reason="kubectl missing: run `bash scripts/install-system.sh`")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_role_of_every_rendered_rayjob_mounts_what_it_reads_and_writes(overlay):
    """What each process of a job opens (docs/ray-jobs.md, *Where things run and what they read*) lies
    under a volume its pod mounts: the infer driver writes run.json/status.json under --out, party 0 reads
    --model, party 1 reads --data and writes --out; the sweep driver reads its --config and writes the
    storage path, and the trainers read the teacher and data and write the storage path; the dealer
    mounts only its TLS credentials."""
    from mpcformer.sweep import SweepConfig

    jobs = {d["metadata"]["name"]: d for d in _render(overlay) if d["kind"] == "RayJob"}
    assert set(jobs) == {"mpcformer-infer", "mpcformer-sweep"}

    infer, argv = _role_groups(jobs["mpcformer-infer"]), _entrypoint(jobs["mpcformer-infer"])
    arg = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert _reaches(infer["head"], arg("--out"), write=True)
    assert _reaches(infer["owner"], arg("--model"))
    assert _reaches(infer["client"], arg("--data")) and _reaches(infer["client"], arg("--out"), write=True)
    credentials = next(a.split("=", 1)[1] for a in argv if a.startswith("group.mpc.credentials_dir="))
    assert _mount_paths(infer["dealer"]) == [(credentials, False)]  # nothing but its rank's TLS key, read-only

    sweep, argv = _role_groups(jobs["mpcformer-sweep"]), _entrypoint(jobs["mpcformer-sweep"])
    assert _reaches(sweep["head"], argv[argv.index("--config") + 1])
    configmap = next(d for d in _render(overlay) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mpcformer-sweep")
    config = SweepConfig.model_validate(yaml.safe_load(configmap["data"]["sweep.yaml"]))
    assert _reaches(sweep["head"], config.storage_path, write=True)
    trainers = [g for role, g in sweep.items() if role != "head"]
    assert trainers and all(_reaches(g, config.storage_path, write=True) for g in trainers)
    assert all(_reaches(g, config.base["teacher"]) and _reaches(g, config.base["data"]["data_dir"]) for g in trainers)


# ------------------------------------------------------------------------------- dashboards
def test_grafana_configmap_is_generated_from_the_dashboards():
    committed = (K8S / "base" / "grafana-dashboards.yaml").read_text()
    assert committed == render_configmap(ROOT / "dashboards"), \
        "k8s/base/grafana-dashboards.yaml is stale: run python -m mpcformer.observability.k8s_configmap"
    configmap = yaml.safe_load(committed)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert configmap["data"] == files


# ------------------------------------------------------------------------------- kustomize
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl missing: run `bash scripts/install-system.sh`")


def _gpus(group: dict) -> str | None:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_renders_the_overlay(overlay):
    docs = _render(overlay)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "PersistentVolumeClaim", "PersistentVolumeClaim",
                            "RayCluster", "RayJob", "RayJob", "ConfigMap", "ConfigMap", "PodMonitor", "PodMonitor",
                            "NetworkPolicy"])
    assert all(doc["metadata"].get("namespace") == "mpcformer" for doc in docs if doc["kind"] != "Namespace")
    workers = [g for t, g in _ray_pod_templates(docs) if t == "worker"]
    images = {c["image"] for _, g in _ray_pod_templates(docs) for c in g["template"]["spec"]["containers"]}
    if overlay == "gpu":
        assert all(_gpus(g) == "1" for g in workers) and images == {"mpcformer:0.1.0-gpu"}
        sweep = next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == "mpcformer-sweep")
        assert "gpus_per_trial=1" in sweep["spec"]["entrypoint"]
    else:
        assert all(_gpus(g) is None for g in workers) and images == {"mpcformer:0.1.0"}


# ------------------------------------------------------------------------------- image
def test_dockerfile_installs_with_the_project_script_on_ray_2_60():
    text = (K8S / "Dockerfile").read_text()
    assert "ARG RAY_IMAGE=rayproject/ray:2.60.0-py311\n" in text and "FROM ${RAY_IMAGE}" in text
    assert "rayproject/ray:2.60.0-py311-gpu" in text  # the CUDA variant, documented as a build arg
    assert 'RUN bash scripts/install.sh "$(which python)"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    import tomllib

    project = tomllib.loads(pyproject)
    needed = {"pyproject.toml", "constraints.txt", "scripts/", project["project"]["readme"]}
    needed |= {f"{folder}/" for folder in project["tool"]["setuptools"]["package-dir"].values()}
    copied = {part for line in text.splitlines() if line.startswith("COPY") for part in line.split()[1:-1]
              if not part.startswith("--")}
    assert needed <= copied, f"the image misses {sorted(needed - copied)} that scripts/install.sh needs"


# ------------------------------------------------------------------------------- network policy
_ROLES = {"owner", "client", "dealer"}


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In) selects pods with ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression  # the only operator these manifests use
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels(doc: dict) -> dict[str, dict]:
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return {name: group["template"]["metadata"]["labels"] for name, group in groups}


def test_party_pods_reach_only_each_other_the_head_and_dns():
    """The parties' NetworkPolicy selects every owner, client and dealer pod of every Ray cluster and no
    head; its peers are party pods and the head (any port), DNS (port 53 in kube-system) and the
    monitoring namespace (metrics port only): no rule lets any other pod in or lets a party out."""
    policy = next(d for d in _manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "mpcformer-parties")
    spec = policy["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    clusters = _of_kind(_manifests(), "RayCluster") + _of_kind(_manifests(), "RayJob")
    pods = [(doc["metadata"]["name"], group, labels) for doc in clusters for group, labels in _pod_labels(doc).items()]
    for name, group, labels in pods:
        selected = _selects(spec["podSelector"], labels)
        assert selected == (labels.get("mpcformer/role") in _ROLES), f"{name}/{group}: {labels}"
    party_labels = [labels for _, _, labels in pods if labels.get("mpcformer/role") in _ROLES]
    head_labels = [labels for _, group, labels in pods if group == "head"]
    assert len(party_labels) >= 3 and head_labels
    for direction, key in (("ingress", "from"), ("egress", "to")):
        for rule in spec[direction]:
            peers = rule[key]  # a rule without peers would admit everyone
            assert peers, f"{direction} rule without {key}: {rule}"
            for peer in peers:
                if "namespaceSelector" in peer:  # another namespace: one named one, narrow ports
                    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    ports = tuple(sorted(p["port"] for p in rule["ports"]))
                    assert (namespace, direction, ports) in {("kube-system", "egress", (53, 53)),
                                                             ("monitoring", "ingress", (8080,))}, rule
                    continue
                selector = peer["podSelector"]
                assert selector, f"an empty podSelector admits every pod of the namespace: {rule}"
                reached = {id(labels) for _, _, labels in pods if _selects(selector, labels)}
                assert reached in ({id(labels) for labels in party_labels}, {id(labels) for labels in head_labels}), (
                    f"{direction} peer {peer} selects pods other than exactly the parties or exactly the heads")


def test_each_role_mounts_only_its_own_tls_secret_where_the_job_reads_credentials():
    """The inference RayJob: owner, client and dealer pods each mount the Secret of their own role (their
    rank's key), read-only, at the directory the entrypoint passes as group.mpc.credentials_dir; the head
    mounts none."""
    job = next(d for d in _of_kind(_manifests(), "RayJob") if d["metadata"]["name"] == "mpcformer-infer")
    entrypoint = " ".join(_entrypoint(job))
    match = re.search(r"group\.mpc\.credentials_dir=(\S+)", entrypoint)
    assert match, entrypoint
    for role, group in _role_groups(job).items():
        pod = group["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        mounts = [(m["name"], m["mountPath"], m.get("readOnly", False)) for c in pod["containers"]
                  for m in c.get("volumeMounts", []) if m["name"] in secrets]
        if role == "head":
            assert not secrets, secrets
            continue
        assert sorted(secrets.values()) == [f"mpcformer-infer-tls-{role}"], (role, secrets)
        assert mounts == [(next(iter(secrets)), match.group(1), True)], (role, mounts)
