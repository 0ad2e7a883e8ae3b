#!/usr/bin/env python3
"""Validates deploy/: every Kubernetes manifest against the official schemas
(strict: unknown fields are errors) and the Dockerfile with hadolint.
Exits non-zero on the first problem. No cluster or Docker engine needed."""
import pathlib
import subprocess
import sys

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.30.0"


def check_manifests() -> int:
    count = 0
    for path in sorted((HERE / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            # Raises on schema violations, unknown fields and removed APIs.
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            count += 1
            print(f"ok  {path.relative_to(HERE.parent)}: {doc['kind']}/{doc['metadata']['name']}")
    if count == 0:
        sys.exit("no Kubernetes manifests found")
    return count


def check_policy_configmap() -> None:
    """The manifest's policy ConfigMap must be the shipped policies/ files."""
    path = HERE / "kubernetes" / "costguard-sidecar.yaml"
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "costguard-policies":
            for name, text in doc["data"].items():
                shipped = (HERE.parent / "policies" / name).read_text()
                if text != shipped:
                    sys.exit(f"{path.name}: ConfigMap costguard-policies/{name} differs from policies/{name}")
            print("ok  costguard-policies ConfigMap matches policies/")
            return
    sys.exit("no costguard-policies ConfigMap in the manifest")


def check_dockerfile() -> None:
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(HERE / "Dockerfile")], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("hadolint:\n" + result.stdout + result.stderr)
    print("ok  deploy/Dockerfile (hadolint)")


if __name__ == "__main__":
    try:
        check_manifests()
    except kubernetes_validate.ValidationError as e:
        sys.exit(f"invalid manifest: {e}")
    check_policy_configmap()
    check_dockerfile()
