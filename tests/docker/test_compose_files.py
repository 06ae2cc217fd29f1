"""Static checks of the Docker deployment files: no engine needed, so they run everywhere.

The compose smoke test (ci/compose_smoke.sh, `make smoke`) proves the files on a real
engine; these tests keep them consistent with the services' Settings between smoke runs: every
setting is passed through by compose and listed in .env.example, only the gateway publishes a
port, every service has a healthcheck, a restart policy, a memory limit and its volumes.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    # compose service -> (package, port, volume mounted, mount point)
    "encoder": ("glimpse.encoder", 8001, "model-cache", "/cache"),
    "index": ("glimpse.index", 8002, "index-data", "/data"),
    "gateway": ("glimpse.gateway", 8000, "media", "/media"),
}
# Settings compose fixes to the volumes and the service names.
FIXED = {
    "ENCODER_CACHE_DIR": "/cache/open_clip",
    "INDEX_DATA_DIR": "/data",
    "GATEWAY_MEDIA_DIR": "/media",
    "GATEWAY_ENCODER_URL": "http://encoder:8001",
    "GATEWAY_INDEX_URL": "http://index:8002",
}


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


def _env_names(package: str) -> list[str]:
    """Every variable a service reads: the fields of each settings class of its config module
    (the index has two: Settings and MilvusSettings)."""
    module = importlib.import_module(f"{package}.config")
    classes = [c for c in vars(module).values() if isinstance(c, type)
               and issubclass(c, BaseSettings) and c is not BaseSettings]
    return [f"{c.model_config['env_prefix']}{name.upper()}"
            for c in classes for name in c.model_fields]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return _load("docker-compose.gpu.yml")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_setting_reaches_its_container(compose: dict[str, Any], service: str) -> None:
    package = SERVICES[service][0]
    environment = compose["services"][service]["environment"]
    assert isinstance(environment, dict)
    for var in _env_names(package):
        assert var in environment, f"{var} is not passed to the {service} container"
        if var in FIXED:
            assert environment[var] == FIXED[var]
        else:
            # A bare name: the value comes from .env or the shell; unset keeps the default.
            assert environment[var] is None, f"{var} should be passed through, not fixed"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_env_example_lists_every_setting(service: str) -> None:
    text = (ROOT / ".env.example").read_text()
    for var in _env_names(SERVICES[service][0]):
        assert re.search(rf"^#\s*{var}[=:]", text, re.MULTILINE), f"{var} missing in .env.example"
    # Nothing is set by default but the project name: a copied .env changes nothing else.
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert active == ["COMPOSE_PROJECT_NAME=glimpse"]


def test_only_the_gateway_publishes_a_port_on_localhost(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "ports" not in services["encoder"] and "ports" not in services["index"]
    assert services["gateway"]["ports"] == ["${GLIMPSE_BIND:-127.0.0.1}:${GLIMPSE_PORT:-8000}:8000"]
    assert compose["networks"]["backend"]["internal"] is True
    assert services["index"]["networks"] == ["backend"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_runtime_policy(compose: dict[str, Any], service: str) -> None:
    package, port, volume, mount = SERVICES[service]
    spec = compose["services"][service]
    assert spec["restart"] == "unless-stopped"
    assert re.fullmatch(r"\$\{[A-Z_]+:-\d+g\}", spec["mem_limit"])
    assert spec["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/readyz" in spec["healthcheck"]["test"][3]
    assert f"{volume}:{mount}" in spec["volumes"]
    assert volume in compose["volumes"]
    assert spec["build"] == {"context": ".", "dockerfile": f"docker/{service}.Dockerfile",
                             "args": spec["build"]["args"]}
    assert spec["image"].startswith(f"glimpse-{service}:")


def test_gateway_waits_for_healthy_upstreams(compose: dict[str, Any]) -> None:
    assert compose["services"]["gateway"]["depends_on"] == {
        "encoder": {"condition": "service_healthy"},
        "index": {"condition": "service_healthy"},
    }


def test_gpu_override(gpu: dict[str, Any]) -> None:
    encoder, index = gpu["services"]["encoder"], gpu["services"]["index"]
    for spec in (encoder, index):
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert spec["image"].endswith("-cuda")
    assert encoder["environment"] == {"ENCODER_DEVICE": "cuda", "ENCODER_PRECISION": "fp16"}
    assert "whl/cu" in encoder["build"]["args"]["TORCH_INDEX_URL"]
    assert index["environment"] == {"INDEX_DEVICE": "cuda"}
    assert "faiss-gpu" in index["build"]["args"]["FAISS_PACKAGE"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dockerfile_installs_only_its_extra_as_non_root(service: str) -> None:
    package = SERVICES[service][0]
    text = (ROOT / "docker" / f"{service}.Dockerfile").read_text()
    extras = set(re.findall(r"pip install '\.\[([a-z,]+)\]'", text))
    wanted = {"encoder": {"encoder"}, "index": {"index"}, "gateway": {"gateway,scripts"}}
    assert extras == wanted[service]
    final = text.rsplit("\nFROM ", 1)[1]
    assert final.startswith("${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert re.search(r"^USER glimpse:glimpse$", final, re.MULTILINE)
    # The final stage gets the venv and the code; pip never runs there.
    assert "pip install" not in final
    assert f'"{package}.main:app"' in final


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"  # allow-list: everything else stays out
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "glimpse"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Compose v1 not installed")
def test_compose_v1_accepts_both_files(tmp_path: Path) -> None:
    env = tmp_path / "empty.env"
    env.write_text("")
    out = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-p", "glimpse", "-f", "docker-compose.yml",
         "-f", "docker-compose.gpu.yml", "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    merged = yaml.safe_load(out)
    assert merged["services"]["encoder"]["environment"]["ENCODER_PRECISION"] == "fp16"
    assert str(merged["services"]["gateway"]["ports"][0]).startswith("127.0.0.1:8000:8000")


# Encoder replicas (docs/deploy.md, "Encoder replicas") ----------------------------------------

MULTI_GPU = "docker-compose.multi-gpu.yml"


def test_the_encoder_can_be_scaled(compose: dict[str, Any], gpu: dict[str, Any]) -> None:
    # `up --scale encoder=N` needs containers without a fixed name or a host port; the gateway
    # reaches them all by the service name, which Docker's DNS answers with every address.
    for spec in (compose["services"]["encoder"], gpu["services"]["encoder"]):
        assert not {"container_name", "hostname", "ports"} & set(spec)
    assert compose["services"]["gateway"]["environment"]["GATEWAY_ENCODER_URL"] == (
        "http://encoder:8001"
    )


@pytest.fixture(scope="module")
def multi_gpu() -> dict[str, Any]:
    return _load(MULTI_GPU)


def _device(spec: dict[str, Any]) -> dict[str, Any]:
    (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
    assert isinstance(device, dict)
    return device


def test_multi_gpu_pins_one_encoder_replica_per_gpu(
    multi_gpu: dict[str, Any], gpu: dict[str, Any]
) -> None:
    services = multi_gpu["services"]
    assert sorted(services) == ["encoder-gpu1", "encoder-gpu2", "encoder-gpu3"]
    base = gpu["services"]["encoder"]
    gpus = [_device(base)["device_ids"]]
    for spec in services.values():
        assert spec["extends"] == {"file": "docker-compose.yml", "service": "encoder"}
        device = _device(spec)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus.append(device["device_ids"])
        # The same GPU encoder as docker-compose.gpu.yml's, under the alias the gateway calls.
        assert spec["image"] == base["image"] and spec["environment"] == base["environment"]
        assert spec["build"]["args"]["TORCH_INDEX_URL"] == base["build"]["args"][
            "TORCH_INDEX_URL"
        ]
        assert spec["mem_limit"] == base["mem_limit"]
        assert spec["networks"]["backend"] == {"aliases": ["encoder"]}
        assert "default" in spec["networks"]  # the first start downloads the weights
        assert not {"container_name", "hostname", "ports"} & set(spec)
    # One GPU each, by default 0 (the `encoder` service), 1, 2, 3.
    defaults = [re.fullmatch(r"\$\{GLIMPSE_GPU(_\d)?:-(\d)\}", ids[0]) for ids in gpus]
    assert all(len(ids) == 1 for ids in gpus)
    assert [m.group(2) if m else None for m in defaults] == ["0", "1", "2", "3"]


def test_env_example_names_the_gpu_of_each_replica() -> None:
    text = (ROOT / ".env.example").read_text()
    for var in ("GLIMPSE_GPU", "GLIMPSE_GPU_1", "GLIMPSE_GPU_2", "GLIMPSE_GPU_3"):
        assert re.search(rf"^#{var}=\d$", text, re.MULTILINE), var


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Compose v1 not installed")
def test_compose_v1_accepts_the_multi_gpu_file(tmp_path: Path) -> None:
    env = tmp_path / "empty.env"
    env.write_text("")
    out = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-p", "glimpse", "-f", "docker-compose.yml",
         "-f", "docker-compose.gpu.yml", "-f", MULTI_GPU, "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    services = yaml.safe_load(out)["services"]
    encoder = services["encoder"]
    for n in range(4):
        spec = services["encoder" if n == 0 else f"encoder-gpu{n}"]
        assert _device(spec)["device_ids"] == [str(n)]
        # `extends` brought the whole service: every setting, the cache volume, the health check.
        assert set(spec["environment"]) == set(encoder["environment"])
        assert spec["environment"]["ENCODER_DEVICE"] == "cuda"
        assert spec["volumes"] == encoder["volumes"]
        assert spec["healthcheck"] == encoder["healthcheck"]
        assert spec["restart"] == "unless-stopped"
        assert spec["image"].endswith("-cuda")
