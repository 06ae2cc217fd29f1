"""docker-compose.milvus.yml: Milvus standalone beside the services, the index pointed at it.

Like test_compose_files.py, these read the files (and run Compose v1's `config` when it is
installed); the stack itself needs images and a Docker engine (ci/compose_smoke.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MILVUS = "docker-compose.milvus.yml"


@pytest.fixture(scope="module")
def milvus() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / MILVUS).read_text())
    assert isinstance(data, dict)
    return data


def test_milvus_standalone_runs_on_its_official_images_with_health_checks(
    milvus: dict[str, Any],
) -> None:
    services = milvus["services"]
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.3")
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:")
    assert services["minio"]["image"].startswith("minio/minio:")
    for name in ("etcd", "minio", "milvus"):
        spec = services[name]
        assert spec["healthcheck"]["test"][0] == "CMD", name
        assert spec["restart"] == "unless-stopped"
        assert spec["networks"] == ["backend"], f"{name} must stay on the internal network"
        assert "ports" not in spec, f"{name} publishes nothing"
        assert spec["volumes"][0].split(":")[0] in milvus["volumes"]
    assert services["milvus"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"}, "minio": {"condition": "service_healthy"}}


def test_the_index_points_at_milvus_and_installs_the_client(milvus: dict[str, Any]) -> None:
    index = milvus["services"]["index"]
    assert index["environment"]["INDEX_BACKEND"] == "${INDEX_BACKEND:-milvus}"
    assert index["environment"]["INDEX_MILVUS_URI"] == "${INDEX_MILVUS_URI:-http://milvus:19530}"
    assert index["depends_on"] == {"milvus": {"condition": "service_healthy"}}
    assert index["build"]["args"]["INDEX_EXTRAS"] == "milvus"
    dockerfile = (ROOT / "docker" / "index.Dockerfile").read_text()
    assert 'pip install ".[$INDEX_EXTRAS]"' in dockerfile
    assert "ARG INDEX_EXTRAS=\n" in dockerfile  # the default image stays Faiss-only


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Compose v1 not installed")
def test_compose_v1_merges_the_milvus_file(tmp_path: Path) -> None:
    env = tmp_path / "empty.env"
    env.write_text("")
    out = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-p", "glimpse", "-f", "docker-compose.yml",
         "-f", MILVUS, "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    merged = yaml.safe_load(out)
    index = merged["services"]["index"]
    assert index["environment"]["INDEX_BACKEND"] == "milvus"
    assert index["environment"]["INDEX_MILVUS_URI"] == "http://milvus:19530"
    # The base file's settings still reach the container beside the override's.
    assert "INDEX_MILVUS_COLLECTION" in index["environment"]
    assert {"etcd", "minio", "milvus", "encoder", "index", "gateway"} <= set(merged["services"])
    assert str(merged["services"]["gateway"]["ports"][0]).startswith("127.0.0.1:8000:8000")
