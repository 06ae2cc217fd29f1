"""``glimpse ingest DIR --watch`` against the real services (index, encoder with the tiny
model, gateway with an API key) as processes: adds, changes, moves, copies and deletes followed
over HTTP, a restart that catches up from its state file, and the gateway routes the watch
uses (POST /ingest/ids, PATCH /images/{id}) with their bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_ingest_stack import image_bytes
from tests.support.stack import Stack, start_stack

KEY = "watch-test-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack"), GATEWAY_API_KEY=KEY) as s:
        yield s


def settled(path: Path, data: bytes) -> Path:
    """Written with an mtime a minute ago, so the watch takes it without waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


class Gateway:
    def __init__(self, stack: Stack) -> None:
        self.client = stack.client(KEY)

    def ids(self, *datas: bytes) -> dict[str, int]:
        answer = self.client.post("/ingest/ids", json={"sha256": [sha(d) for d in datas]})
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["ids"])

    def id_of(self, data: bytes) -> int | None:
        return self.ids(data).get(sha(data))

    def path_of(self, image_id: int) -> str:
        return str(self.client.get(f"/images/{image_id}/meta").json()["path"])

    def searched_path(self, image_id: int) -> str | None:
        """The path /search/image answers for the image, searched by its own bytes."""
        original = self.client.get(f"/images/{image_id}").content
        found = self.client.post("/search/image", files={"file": ("q.jpg", original)},
                                 data={"k": "50", "relevance": "all"}).json()["results"]
        return next((h["path"] for h in found if h["id"] == image_id), None)


def start_watch(stack: Stack, folder: Path, state: Path, cwd: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "glimpse", "ingest", str(folder), "--url", stack.gateway_url,
           "--api-key", KEY, "--watch", "--state", str(state), "--json",
           "--report", str(cwd / "report.jsonl")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd)


def stop_watch(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def first_summary(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The first pass's JSON summary, printed before the watch starts."""
    assert proc.stdout is not None
    text = ""
    while True:
        line = proc.stdout.readline()
        assert line, f"the command ended: {proc.wait()}"
        text += line
        if line.startswith("}"):
            return dict(json.loads(text))


def test_adds_changes_moves_copies_and_deletes_follow_the_folder(
    stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    a, b, c = image_bytes(9001), image_bytes(9002), image_bytes(9003)
    settled(folder / "a.jpg", a)
    settled(folder / "trip/b.jpg", b)
    settled(folder / "c.jpg", c)
    state = tmp_path / "state.json"
    gw = Gateway(stack)
    proc = start_watch(stack, folder, state, tmp_path)
    try:
        summary = first_summary(proc)
        assert summary["added"] == 3 and summary["failed"] == 0
        ids = gw.ids(a, b, c)
        assert len(ids) == 3

        # Added.
        d = image_bytes(9004)
        settled(folder / "new/d.jpg", d)
        d_id = wait(lambda: gw.id_of(d), "the new file")
        assert gw.path_of(d_id) == "new/d.jpg"

        # Moved: the same id, its new path in the meta and in a search.
        os.rename(folder / "trip/b.jpg", folder / "moved-b.jpg")
        wait(lambda: gw.path_of(ids[sha(b)]) == "moved-b.jpg", "the moved path")
        assert gw.id_of(b) == ids[sha(b)]
        assert gw.searched_path(ids[sha(b)]) == "moved-b.jpg"

        # Changed: the new bytes are a new image, the old ones are deleted.
        a2 = image_bytes(9005)
        settled(folder / "a.jpg", a2)
        wait(lambda: gw.id_of(a2) and gw.id_of(a) is None, "the changed file")
        assert gw.path_of(gw.ids(a2)[sha(a2)]) == "a.jpg"

        # A copy, then the original deleted: the image stays, showing the copy's path.
        (folder / "copies").mkdir()
        settled(folder / "copies/c.jpg", c)
        time.sleep(3)  # the copy is in the state before the original goes
        (folder / "c.jpg").unlink()
        wait(lambda: gw.path_of(ids[sha(c)]) == "copies/c.jpg", "the copy's path")
        assert gw.id_of(c) == ids[sha(c)]

        # Deleted.
        (folder / "new/d.jpg").unlink()
        wait(lambda: gw.id_of(d) is None, "the deleted file")
        assert gw.client.get(f"/images/{d_id}/meta").status_code == 404
    finally:
        _, err = stop_watch(proc)
    assert "Traceback" not in err, err
    recorded = json.loads(state.read_text())["folders"][str(folder.resolve())]
    assert sorted(recorded) == ["a.jpg", "copies/c.jpg", "moved-b.jpg"]


def test_a_restart_catches_up_from_its_state_file(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    keep, gone = image_bytes(9101), image_bytes(9102)
    settled(folder / "keep.jpg", keep)
    settled(folder / "gone.jpg", gone)
    state = tmp_path / "state.json"
    gw = Gateway(stack)
    proc = start_watch(stack, folder, state, tmp_path)
    try:
        assert first_summary(proc)["added"] == 2
        wait(lambda: state.exists(), "the state file")
    finally:
        stop_watch(proc)

    # While nothing watches: one file added, one deleted, one renamed.
    late = image_bytes(9103)
    settled(folder / "late.jpg", late)
    (folder / "gone.jpg").unlink()
    os.rename(folder / "keep.jpg", folder / "kept.jpg")
    keep_id = gw.id_of(keep)
    proc = start_watch(stack, folder, state, tmp_path)
    try:
        again = first_summary(proc)
        assert again["added"] == 1 and again["already"] == 1  # the first pass: late.jpg only
        wait(lambda: gw.id_of(gone) is None, "the file deleted meanwhile")
        wait(lambda: gw.path_of(keep_id) == "kept.jpg", "the file renamed meanwhile")
        assert gw.id_of(late) is not None and gw.id_of(keep) == keep_id
    finally:
        _, err = stop_watch(proc)
    assert "1 moved, 1 deleted" in err, err


def test_the_routes_the_watch_uses_and_their_bad_inputs(stack: Stack) -> None:
    gw = Gateway(stack)
    data = image_bytes(9201)
    up = gw.client.post("/ingest", files=[("files", ("r/one.jpg", data, "image/jpeg"))])
    image_id = up.json()["items"][0]["id"]
    assert gw.ids(data, image_bytes(9202)) == {sha(data): image_id}

    moved = gw.client.patch(f"/images/{image_id}", json={"path": "r/two.jpg"})
    assert moved.status_code == 200 and moved.json() == {"id": image_id, "path": "r/two.jpg"}
    assert gw.path_of(image_id) == "r/two.jpg"
    cleaned = gw.client.patch(f"/images/{image_id}", json={"path": "./r//three.jpg"})
    assert cleaned.json()["path"] == "r/three.jpg"

    for body, named in (({"path": "../up.jpg"}, "path"), ({"path": "/etc/x.jpg"}, "path"),
                        ({"path": ""}, "path"), ({}, "path"),
                        ({"path": "a.jpg", "extra": 1}, "extra")):
        bad = gw.client.patch(f"/images/{image_id}", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert set(bad.json()) >= {"error", "error_type", "details"} and named in bad.text
    unknown = gw.client.patch("/images/987654321", json={"path": "x.jpg"})
    assert unknown.status_code == 404 and "987654321" in unknown.json()["error"]
    bad_sha = gw.client.post("/ingest/ids", json={"sha256": ["nope"]})
    assert bad_sha.status_code == 422 and "sha256" in bad_sha.text
    assert gw.client.post("/ingest/ids", json={"sha256": []}).json() == {"ids": {}}
    with stack.client() as anonymous:
        assert anonymous.patch(f"/images/{image_id}", json={"path": "x.jpg"}).status_code == 401
        assert anonymous.post("/ingest/ids", json={"sha256": [sha(data)]}).status_code == 401
    assert gw.path_of(image_id) == "r/three.jpg"
    with httpx.Client(base_url=stack.index.url) as index:  # the index holds it, not a cache
        assert index.get(f"/v1/items/{image_id}").json()["path"] == "r/three.jpg"
