"""An uploader that streams an endless body, chunked (no Content-Length) or declared, and
notes how much it had sent when the server answered; plus a peak-memory sampler.

A raw socket, not httpx: httpx reads no answer until it has sent the whole body, and the point
is to see the 413 arrive while the client is still sending.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil


@dataclass
class UploadResult:
    status: int | None
    body: bytes
    sent: int = field(default=0, metadata={"doc": "body bytes sent when the answer came"})
    seconds: float = 0.0
    error: str | None = None


def _read_response(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        head, _, rest = data.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while length is not None and len(rest) < length:
            got = sock.recv(65536)
            if not got:
                break
            rest += got
    except (TimeoutError, ConnectionError, OSError):
        head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        return None, data
    return int(head.split()[1]), rest


def stream_upload(
    url: str,
    *,
    total: int,
    chunked: bool = True,
    headers: dict[str, str] | None = None,
    prefix: bytes = b"",
    chunk: int = 64 * 1024,
    timeout: float = 30.0,
) -> UploadResult:
    """POST ``prefix`` then filler up to ``total`` body bytes, stopping as soon as the server
    answers (or closes). Returns the status, the answer's body and the bytes sent by then."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {total}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request_head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    filler = b"\xab" * chunk
    sent = 0
    started = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(request_head)
        pending = prefix
        while sent < total:
            piece = pending[:chunk] if pending else filler[: min(chunk, total - sent)]
            pending = pending[len(piece):]
            frame = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered (or closed) before the body ended
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            if time.monotonic() - started > timeout:
                return UploadResult(None, b"", sent, time.monotonic() - started, "client timeout")
        else:
            if chunked:
                try:
                    sock.sendall(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
        status, body = _read_response(sock, timeout)
        return UploadResult(status, body, sent, time.monotonic() - started)
    finally:
        sock.close()


def multipart_prefix(boundary: str, field_name: str, filename: str, content_type: str) -> bytes:
    """The opening of a multipart body whose one file part then goes on and on."""
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
        f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
    ).encode() + b"\xff\xd8\xff\xe0"


class RssSampler:
    """Samples a process's RSS every few milliseconds in a thread; ``peak`` is the highest."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
