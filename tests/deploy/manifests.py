"""Build the kustomizations under deploy/kubernetes and check them for consistency without a cluster.

Each `*_problems` function takes the list of built objects and returns human-readable problems
(empty = consistent), so the tests can show that a broken manifest is caught, not only that the
shipped ones pass.
"""

from __future__ import annotations

import base64
import functools
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dbintel.cli import build_parser
from dbintel.common.config import parse_config

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
# Every directory `kubectl apply -k` is documented for.
KUSTOMIZATIONS = {
    "root": KUBERNETES,
    "base": KUBERNETES / "base",
    "ephemeral": KUBERNETES / "overlays" / "ephemeral",
    "production": KUBERNETES / "overlays" / "production",
    "sentinel": KUBERNETES / "overlays" / "sentinel",
}
NPM_MODULES = REPO / ".ci" / "work" / "npm" / "node_modules"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DBINTEL_IMAGE = re.compile(r"^(?:.*/)?dbintel(?::|@|$)")
REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")

Obj = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(
            "kubectl is not on PATH: the deploy tests need kubectl (with kustomize) to build "
            "deploy/kubernetes; install it (it ships with the machine image)"
        )
    return path


@functools.cache
def _build_text(directory: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def build(name: str) -> list[Obj]:
    """The objects `kubectl apply -k` would send, as fresh dicts the caller may mutate."""
    return [doc for doc in yaml.safe_load_all(_build_text(KUSTOMIZATIONS[name])) if doc]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _ns(obj: Obj) -> str:
    return obj["metadata"].get("namespace", "default")


def _ref(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def workloads(objects: list[Obj]) -> Iterator[Obj]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod template) pairs."""
    for workload in workloads(objects):
        yield workload, workload["spec"]["template"]


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _selected_pods(objects: list[Obj], namespace: str, selector: Obj) -> list[Obj]:
    return [
        template
        for workload, template in pod_templates(objects)
        if _ns(workload) == namespace and _matches(selector, template["metadata"].get("labels") or {})
    ]


# -- selectors ------------------------------------------------------------------------------------
def selector_problems(objects: list[Obj]) -> list[str]:
    problems = []

    def check(owner: Obj, where: str, selector: Obj) -> None:
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            return  # an empty selector selects every pod on purpose (default-deny policies)
        if not _selected_pods(objects, _ns(owner), selector):
            problems.append(f"{_ref(owner)} {where} {selector} matches no pod template")

    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec") or {}
        if kind == "Service" and spec.get("selector"):
            check(obj, "spec.selector", {"matchLabels": spec["selector"]})
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            check(obj, "spec.selector", spec.get("selector") or {})
        elif kind == "NetworkPolicy":
            check(obj, "spec.podSelector", spec.get("podSelector") or {})
            for direction, peers_key in (("ingress", "from"), ("egress", "to")):
                for i, rule in enumerate(spec.get(direction) or []):
                    for peer in rule.get(peers_key) or []:
                        # A peer with a namespaceSelector may select pods outside this build.
                        if "podSelector" in peer and "namespaceSelector" not in peer:
                            check(obj, f"{direction}[{i}].{peers_key}.podSelector", peer["podSelector"])
    return problems


# -- ports ----------------------------------------------------------------------------------------
def _port_problem(container: Obj, port: Any) -> str | None:
    ports = container.get("ports") or []
    if isinstance(port, str):
        if port not in {p.get("name") for p in ports}:
            return f"port {port!r} is not a named port of container {container['name']!r}"
    elif port not in {p["containerPort"] for p in ports}:
        return f"port {port} is not a containerPort of container {container['name']!r}"
    return None


def port_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for workload, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(probe_name) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        problem = _port_problem(container, probe[handler]["port"])
                        if problem:
                            problems.append(f"{_ref(workload)} {probe_name}.{handler}: {problem}")
    for obj in objects:
        spec = obj.get("spec") or {}
        if obj["kind"] == "PodMonitor":
            pods = _selected_pods(objects, _ns(obj), spec.get("selector") or {})
            for endpoint in spec.get("podMetricsEndpoints") or []:
                for template in pods:
                    named = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports") or []}
                    if endpoint.get("port") not in named:
                        problems.append(
                            f"{_ref(obj)} endpoint port {endpoint.get('port')!r} is not named by the "
                            f"pods it selects ({template['metadata'].get('labels')})"
                        )
        elif obj["kind"] == "Service" and spec.get("selector"):
            pods = _selected_pods(objects, _ns(obj), {"matchLabels": spec["selector"]})
            for service_port in spec.get("ports") or []:
                target = service_port.get("targetPort", service_port["port"])
                for template in pods:
                    if all(_port_problem(c, target) for c in template["spec"]["containers"]):
                        problems.append(f"{_ref(obj)} targetPort {target!r} is not served by the pods it selects")
    return problems


# -- env, Secrets and ConfigMaps ------------------------------------------------------------------
def _keys(objects: list[Obj], kind: str, namespace: str, name: str) -> set[str] | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name and _ns(obj) == namespace:
            return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})
    return None


def reference_problems(objects: list[Obj]) -> list[str]:
    """Env vars and volumes that name a ConfigMap/Secret (key) that the build does not provide."""
    problems = []
    for workload, template in pod_templates(objects):
        namespace = _ns(workload)
        for container in template["spec"]["containers"]:
            for env in container.get("env") or []:
                source = env.get("valueFrom") or {}
                for ref_key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if ref_key in source and not source[ref_key].get("optional"):
                        ref = source[ref_key]
                        keys = _keys(objects, kind, namespace, ref["name"])
                        if keys is None or ref["key"] not in keys:
                            problems.append(
                                f"{_ref(workload)} env {env['name']}: {kind} {ref['name']} has no key {ref['key']!r}"
                            )
        for volume in template["spec"].get("volumes") or []:
            for vol_key, kind, name_key in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
                if vol_key in volume and not volume[vol_key].get("optional"):
                    name = volume[vol_key][name_key]
                    keys = _keys(objects, kind, namespace, name)
                    if keys is None:
                        problems.append(f"{_ref(workload)} volume {volume['name']}: no {kind} {name}")
                    for item in volume[vol_key].get("items") or []:
                        if keys is not None and item["key"] not in keys:
                            problems.append(
                                f"{_ref(workload)} volume {volume['name']}: {kind} {name} has no key {item['key']!r}"
                            )
    return problems


def hpa_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        group = target.get("apiVersion", "")
        if not any(
            o["kind"] == target["kind"]
            and o["metadata"]["name"] == target["name"]
            and o["apiVersion"] == group
            and _ns(o) == _ns(hpa)
            for o in objects
        ):
            problems.append(f"{_ref(hpa)} scaleTargetRef {group} {target['kind']}/{target['name']} does not exist")
    return problems


# -- dbintel containers ---------------------------------------------------------------------------
def dbintel_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj, Obj]]:
    """(workload, pod template, container) for every container running the dbintel image."""
    for workload, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            if DBINTEL_IMAGE.match(container["image"]):
                yield workload, template, container


def _parse_args(args: list[str]):
    """build_parser().parse_args, with argparse's exit turned into a value."""
    try:
        return build_parser().parse_args(args), None
    except SystemExit as exc:
        return None, f"dbintel rejects args {args} (exit {exc.code})"


def args_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for workload, _, container in dbintel_containers(objects):
        if container.get("command"):
            problems.append(f"{_ref(workload)}: command overrides the image's dbintel entrypoint")
        parsed, problem = _parse_args(container.get("args") or [])
        if problem:
            problems.append(f"{_ref(workload)}: {problem}")
        elif parsed.command not in ("coordinator", "agent"):
            problems.append(f"{_ref(workload)}: runs `dbintel {parsed.command}`, not a long-running role")
        elif not parsed.config:
            problems.append(f"{_ref(workload)}: no --config")
    return problems


def _file_under_mount(
    objects: list[Obj], workload: Obj, template: Obj, container: Obj, path: str
) -> tuple[str, str, str] | None:
    """(kind, name, key) of the ConfigMap/Secret file that `path` is in this container, or None."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    # The deepest mount wins, as in the container's mount table.
    for mount in sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"])):
        mount_path = mount["mountPath"].rstrip("/")
        if not path.startswith(mount_path + "/"):
            continue
        relative = posixpath.relpath(path, mount_path)
        volume = volumes.get(mount["name"], {})
        for vol_key, kind, name_key in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            if vol_key in volume:
                name = volume[vol_key][name_key]
                items = volume[vol_key].get("items")
                key = next((i["key"] for i in items if i["path"] == relative), None) if items else relative
                keys = _keys(objects, kind, _ns(workload), name) or set()
                return (kind, name, key) if key in keys else None
        return None
    return None


def _object_data(objects: list[Obj], kind: str, namespace: str, name: str, key: str) -> str:
    obj = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name and _ns(o) == namespace)
    return (obj.get("stringData") or {}).get(key) or (obj.get("data") or {})[key]


def container_env(objects: list[Obj], workload: Obj, container: Obj) -> dict[str, str]:
    """The env the kubelet would give the container (field refs as stand-in values)."""
    env = {}
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item.get("value", "")
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            obj = find(objects, "Secret", ref["name"])
            if "stringData" in obj and ref["key"] in obj["stringData"]:
                env[item["name"]] = obj["stringData"][ref["key"]]
            else:
                env[item["name"]] = base64.b64decode(obj["data"][ref["key"]]).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[item["name"]] = f"stand-in-for-{item['name'].lower()}"
    return env


def _role_references(config, role: str) -> list[tuple[str, str | None, list[str]]]:
    """(where, secret reference, TLS files) the given role resolves at run time."""
    if role == "coordinator":
        redis = config.scaling.redis
        if config.scaling.mode != "redis":
            return []
        references = [
            (
                "scaling.redis",
                redis.password,
                [f for f in (redis.tls.ca_file, redis.tls.cert_file, redis.tls.key_file) if f],
            )
        ]
        if redis.sentinel is not None:
            tls = redis.sentinel.tls
            references.append(
                (
                    "scaling.redis.sentinel",
                    redis.sentinel.password,
                    [f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f],
                )
            )
        return references
    return [
        (f"databases[{db.name}]", db.password, [f for f in (db.tls.ca_file, db.tls.cert_file, db.tls.key_file) if f])
        for db in config.databases
    ]


def config_problems(objects: list[Obj]) -> list[str]:
    """Run `dbintel validate` on each dbintel container's mounted config with that container's env, and
    check that every password reference and TLS file its role resolves is provided by the pod."""
    problems = []
    for workload, template, container in dbintel_containers(objects):
        parsed, _ = _parse_args(container.get("args") or [])
        if parsed is None or not parsed.config:
            continue  # args_problems reports it
        located = _file_under_mount(objects, workload, template, container, parsed.config)
        if located is None:
            problems.append(f"{_ref(workload)}: no ConfigMap/Secret key is mounted at --config {parsed.config}")
            continue
        text = _object_data(objects, located[0], _ns(workload), located[1], located[2])
        env = container_env(objects, workload, container)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(text)
            result = subprocess.run(
                [sys.executable, "-m", "dbintel.cli", "validate", str(path)],
                env={"PATH": "/usr/bin:/bin", **env},
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp,
            )
        if result.returncode != 0:
            problems.append(f"{_ref(workload)}: dbintel validate rejects its config: {result.stderr.strip()}")
            continue
        config = parse_config(text, environ=env)
        for where, reference, tls_files in _role_references(config, parsed.command):
            match = REFERENCE.match(reference) if reference else None
            if match and match.group(1) == "env" and match.group(2) not in env:
                problems.append(
                    f"{_ref(workload)}: {where}.password needs env {match.group(2)}, which the container does not set"
                )
            files = tls_files + ([match.group(2)] if match and match.group(1) == "file" else [])
            for file in files:
                if _file_under_mount(objects, workload, template, container, file) is None:
                    problems.append(
                        f"{_ref(workload)}: {where} reads {file}, which no mounted Secret/ConfigMap key provides"
                    )
    return problems


def all_problems(objects: list[Obj]) -> list[str]:
    return (
        selector_problems(objects)
        + port_problems(objects)
        + reference_problems(objects)
        + hpa_problems(objects)
        + args_problems(objects)
        + config_problems(objects)
    )
