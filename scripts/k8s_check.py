#!/usr/bin/env python3
"""Offline check of the kustomize tree in deploy/kubernetes (`make k8s-check`).

No cluster, kubectl or kustomize is needed. The script
1. reads kustomization.yaml and renders it the way `kustomize build` does for the
   fields this tree uses (namespace, labels, resources) — any other field is refused
   rather than silently ignored;
2. checks what the schemas cannot: every listed file exists and every YAML file of
   the folder is listed; every Deployment runs >= 2 replicas, probes readiness on
   /readyz and liveness on /healthz over a port its container declares, runs as
   non-root, and has a Service selecting its pods on a port they declare; ConfigMap
   and Secret references resolve; every environment key in them is one the minicloud
   binary reads (found in crates/*/src);
3. runs kubernetes-validate --strict (unknown fields, wrong types, missing required
   fields) on every resource file and on the rendered output (kept in
   target/k8s/kustomize-build.yaml), for each pinned Kubernetes version.

Usage: scripts/k8s_check.py [--kubernetes-version 1.32.0 ...] [deploy/kubernetes]
kubernetes-validate and PyYAML come from PYTHONPATH (the Makefile installs them
into target/k8sdeps).
"""

import argparse
import copy
import os
import re
import subprocess
import sys

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("k8s_check: PyYAML is missing (make k8s-check installs it into target/k8sdeps)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Kustomization fields this renderer implements; anything else is an error, so the
# check never passes a tree it does not understand.
SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources"}
LABEL_FIELDS = {"pairs", "includeSelectors", "includeTemplates"}

# Kinds kustomize leaves without a namespace (cluster-scoped), among those a
# deployment like this one could use.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# Environment the binary reads that no clap `env = "…"` declares.
EXTRA_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "RUST_LOG"}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


class YamlError(Exception):
    pass


def load_docs(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [doc for doc in yaml.safe_load_all(f) if doc is not None]
    except yaml.YAMLError as error:
        raise YamlError(f"{path}: not valid YAML: {error}") from None


def rel(path):
    return os.path.relpath(path)


def ident(obj):
    kind = obj.get("kind", "?")
    name = (obj.get("metadata") or {}).get("name", "?")
    return f"{kind}/{name}"


def render(directory, problems):
    """Returns (kustomization, [(file, object)]) after kustomize's transformations."""
    kpath = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(kpath):
        problems.add(directory, "no kustomization.yaml")
        return None, []
    docs = load_docs(kpath)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        problems.add(kpath, "expected exactly one YAML mapping")
        return None, []
    kust = docs[0]
    if kust.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kust.get("kind") != "Kustomization":
        problems.add(kpath, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    for field in sorted(set(kust) - SUPPORTED_FIELDS):
        problems.add(kpath, f"field {field!r} is not emulated by scripts/k8s_check.py (teach it first)")
    namespace = kust.get("namespace")
    if not namespace:
        problems.add(kpath, "no namespace set")
    labels = kust.get("labels") or []
    for entry in labels:
        for field in sorted(set(entry) - LABEL_FIELDS):
            problems.add(kpath, f"labels field {field!r} is not emulated")
        if entry.get("includeSelectors"):
            problems.add(kpath, "labels with includeSelectors: true would rewrite immutable selectors")

    resources = kust.get("resources") or []
    if not resources:
        problems.add(kpath, "no resources listed")
    listed = set()
    rendered = []
    for resource in resources:
        path = os.path.normpath(os.path.join(directory, resource))
        listed.add(path)
        if os.path.isdir(path) or "://" in resource:
            problems.add(kpath, f"resource {resource!r}: only plain files are emulated")
            continue
        if not os.path.isfile(path):
            problems.add(kpath, f"resource {resource!r} does not exist")
            continue
        for obj in load_docs(path):
            if not isinstance(obj, dict):
                problems.add(path, "a document is not a mapping")
                continue
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            for field in ("apiVersion", "kind"):
                if not obj.get(field):
                    problems.add(path, f"{ident(obj)} has no {field}")
            if not meta.get("name"):
                problems.add(path, f"{ident(obj)} has no metadata.name")
            kind = obj.get("kind")
            if namespace:
                if kind in CLUSTER_SCOPED:
                    if kind == "Namespace" and meta.get("name") != namespace:
                        problems.add(path, f"Namespace {meta.get('name')!r} is not the kustomization's {namespace!r}")
                else:
                    if meta.get("namespace") not in (None, namespace):
                        problems.add(path, f"{ident(obj)} names namespace {meta['namespace']!r}; kustomize would move it to {namespace!r}")
                    meta["namespace"] = namespace
            for entry in labels:
                pairs = entry.get("pairs") or {}
                meta.setdefault("labels", {}).update(pairs)
                template = (obj.get("spec") or {}).get("template")
                if entry.get("includeTemplates") and kind in WORKLOADS and template:
                    tmeta = template.setdefault("metadata", {})
                    # kustomize only adds to an existing labels map here.
                    if "labels" in tmeta:
                        tmeta["labels"].update(pairs)
            rendered.append((path, obj))

    for name in sorted(os.listdir(directory)):
        path = os.path.normpath(os.path.join(directory, name))
        if name.endswith((".yaml", ".yml")) and path != kpath and path not in listed:
            problems.add(path, "not listed in kustomization.yaml resources (forgotten?)")

    seen = {}
    for path, obj in rendered:
        key = (obj.get("kind"), obj["metadata"].get("namespace"), obj["metadata"].get("name"))
        if key in seen:
            problems.add(path, f"{ident(obj)} also defined in {seen[key]}")
        seen[key] = path
    if namespace and ("Namespace", None, namespace) not in seen:
        problems.add(kpath, f"no Namespace {namespace!r} among the resources")
    return kust, rendered


def binary_env_names():
    """Every environment variable name the Rust sources read."""
    names = set(EXTRA_ENV)
    pattern = re.compile(r'env\s*=\s*"([A-Z][A-Z0-9_]*)"|env::var(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"\s*\)')
    crates = os.path.join(ROOT, "crates")
    for dirpath, _, files in os.walk(crates):
        if os.sep + "target" in dirpath:
            continue
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                    for match in pattern.finditer(f.read()):
                        names.add(match.group(1) or match.group(2))
    return names


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container, port):
    """The container port a probe or Service targetPort names, or None."""
    for declared in container.get("ports") or []:
        if port in (declared.get("name"), declared.get("containerPort")):
            return declared.get("containerPort")
    return None


def check_objects(rendered, problems):
    by_kind = {}
    for path, obj in rendered:
        by_kind.setdefault(obj.get("kind"), []).append((path, obj))
    names = {kind: {o["metadata"].get("name") for _, o in objs} for kind, objs in by_kind.items()}
    known_env = binary_env_names()

    for kind in ("ConfigMap", "Secret"):
        for path, obj in by_kind.get(kind, []):
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            for key in sorted(keys - known_env):
                problems.add(rel(path), f"{ident(obj)}: {key} is not an environment variable minicloud reads")

    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.add("kustomization", "no Deployment")
    services = by_kind.get("Service", [])
    for path, obj in deployments:
        where = f"{rel(path)} {ident(obj)}"
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 2:
            problems.add(where, f"replicas is {replicas!r}; every stateless service runs at least 2")
        template = spec.get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        if not selects(selector, pod_labels):
            problems.add(where, "selector.matchLabels does not match the pod template's labels")
        pod = template.get("spec") or {}
        pod_security = pod.get("securityContext") or {}
        containers = pod.get("containers") or []
        if not containers:
            problems.add(where, "no containers")
        for container in containers:
            cwhere = f"{where} container {container.get('name')!r}"
            for probe_name, path_expected in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                probe = container.get(probe_name)
                get = (probe or {}).get("httpGet") if isinstance(probe, dict) else None
                if not get:
                    problems.add(cwhere, f"no {probe_name} with httpGet {path_expected}")
                    continue
                if get.get("path") != path_expected:
                    problems.add(cwhere, f"{probe_name} path is {get.get('path')!r}, not {path_expected}")
                if container_port(container, get.get("port")) is None:
                    problems.add(cwhere, f"{probe_name} port {get.get('port')!r} is not a declared container port")
            security = container.get("securityContext") or {}
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.add(cwhere, "does not set runAsNonRoot")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.add(cwhere, "does not set allowPrivilegeEscalation: false")
            for source in container.get("envFrom") or []:
                for ref_kind, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    ref = source.get(ref_kind)
                    if ref and not ref.get("optional") and ref.get("name") not in names.get(kind, set()):
                        problems.add(cwhere, f"envFrom {ref_kind} {ref.get('name')!r} is not among the resources")

        matching = [(p, s) for p, s in services if selects((s.get("spec") or {}).get("selector") or {}, pod_labels)]
        if not matching:
            problems.add(where, "no Service selects its pods")
        for spath, service in matching:
            for port in (service.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if not any(container_port(c, target) for c in containers):
                    problems.add(f"{rel(spath)} {ident(service)}",
                                 f"targetPort {target!r} is not a port of {ident(obj)}'s containers")

    all_pod_labels = [((o.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
                      for _, o in deployments]
    for kind in ("Service", "PodDisruptionBudget"):
        for path, obj in by_kind.get(kind, []):
            spec = obj.get("spec") or {}
            selector = spec.get("selector") or {}
            if kind == "PodDisruptionBudget":
                selector = selector.get("matchLabels") or {}
            if not any(selects(selector, labels) for labels in all_pod_labels):
                problems.add(f"{rel(path)} {ident(obj)}", "selects no Deployment's pods")


def validate(files, versions, problems):
    for version in versions:
        command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                   "--kubernetes-version", version, *files]
        result = subprocess.run(command, capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            problems.add(f"kubernetes-validate --strict (Kubernetes {version})",
                         "failed:\n    " + output.replace("\n", "\n    "))
        elif output:
            print(output)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", default=os.path.join(ROOT, "deploy", "kubernetes"))
    parser.add_argument("--kubernetes-version", action="append", dest="versions",
                        help="validate against this Kubernetes version (repeatable)")
    args = parser.parse_args()
    versions = args.versions or ["1.32.0"]

    problems = Problems()
    try:
        kust, rendered = render(args.directory, problems)
    except YamlError as error:
        print(f"k8s-check: {error}", file=sys.stderr)
        return 1
    if rendered:
        check_objects(rendered, problems)
    files = sorted({rel(path) for path, _ in rendered})
    if files:
        # What `kubectl apply -k` would apply, for validation and for a look.
        out = os.path.join(ROOT, "target", "k8s", "kustomize-build.yaml")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            yaml.safe_dump_all([obj for _, obj in rendered], f, sort_keys=False)
        validate(files + [rel(out)], versions, problems)

    if problems.items:
        print(f"k8s-check: {len(problems.items)} problem(s) in {args.directory}:", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    kinds = {}
    for _, obj in rendered:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"k8s-check: {args.directory} ok ({summary}; namespace {kust.get('namespace')}; "
          f"strict schemas of Kubernetes {', '.join(versions)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
