"""The encoder as deployed: the Dockerfile's plain ``uvicorn glimpse.encoder.main:app`` and
``python -m glimpse.encoder`` answer image requests byte for byte alike (same vectors, same
errors, both encodings, bodies far larger than one socket read), and a declared body over the
limit is refused with 413 before it is read."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.integration.test_encoder_process import TINY_ENV
from tests.support.procs import REPO, ServiceProcess

MODULE_COMMAND = ["-m", "glimpse.encoder", "--log-level", "warning", "--host"]


class ModuleEncoder(ServiceProcess):
    """The encoder started as ``python -m glimpse.encoder`` instead of plain uvicorn."""

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, *MODULE_COMMAND, "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait(timeout, "/readyz" if wait_ready else "/healthz")
        return self


def _files() -> list[tuple[str, tuple[str, bytes, str]]]:
    rng = np.random.default_rng(7)
    files = []
    for i, (w, h) in enumerate([(640, 480), (1024, 768), (300, 500), (2000, 1500)]):
        noisy = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=95)  # 0.2-3 MB each
        files.append(("files", (f"{i}.jpg", buf.getvalue(), "image/jpeg")))
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(png, "PNG")
    files.append(("files", ("p.png", png.getvalue(), "image/png")))
    files.append(("files", ("bad.jpg", b"\xff\xd8\xff not a jpeg", "image/jpeg")))
    return files


def _declared_too_large(port: int) -> bytes:
    """The answer to headers that declare a body over the limit (256 MiB), sent alone."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/embed/image HTTP/1.1\r\nHost: e\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 314572800\r\n\r\n--b\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(rest) >= length[0]:
                break
        return answer


def test_deployed_encoder_answers_as_uvicorn_does(tmp_path: Path) -> None:
    files = _files()
    assert sum(len(f[1][1]) for f in files) > 4 * 1024 * 1024
    answers = []
    for process in (ModuleEncoder, ServiceProcess):
        answer = []
        with process("glimpse.encoder.main", TINY_ENV, tmp_path / "encoder.log") as encoder:
            with httpx.Client(base_url=encoder.url, timeout=60) as client:
                for encoding in ("float", "base64"):
                    for request in (files, files[:1]):
                        r = client.post(f"/v1/embed/image?encoding={encoding}", files=request)
                        assert r.status_code == 200, r.text
                        answer.append(r.content)
            too_large = _declared_too_large(encoder.port)
        assert too_large.startswith(b"HTTP/1.1 413 "), too_large
        answers.append([*answer, too_large.partition(b"\r\n\r\n")[2]])
    assert answers[0] == answers[1]
    body = json.loads(answers[0][0])
    assert [e is None for e in body["embeddings"]] == [False] * 5 + [True]
    assert body["errors"][5]["error_type"] == "invalid_image"
