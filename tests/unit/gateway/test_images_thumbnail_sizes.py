"""GET /images/{id}/thumbnail?size=: the 240 px thumbnail the page's srcset asks on a phone,
beside the default 320 px one, each with its own ETag and file; any other size is a 422."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from glimpse.gateway.media import ThumbnailSize
from tests.unit.gateway.test_http_details import fake_gateway, record


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_each_size_is_made_kept_and_cached_apart(tmp_path: Path) -> None:
    data = jpeg((800, 600))
    sha = hashlib.sha256(data).hexdigest()
    with fake_gateway(tmp_path) as (client, index):
        index.records[3] = record(3, sha)
        media = client.app.state.gateway.media  # type: ignore[attr-defined]
        assert media.put_many([(sha, data)])[0] == [None]

        small = client.get("/images/3/thumbnail?size=240")
        default = client.get("/images/3/thumbnail")
        for response, side in ((small, 240), (default, 320)):
            assert response.status_code == 200, response.text
            with Image.open(io.BytesIO(response.content)) as img:
                assert max(img.size) == side
        assert small.headers["etag"] == f'"{sha}-thumb240"'
        assert default.headers["etag"] == f'"{sha}-thumb"'  # as before there were sizes
        assert len(small.content) < len(default.content)
        kept = media.find_thumbnail(sha, "image/webp", ThumbnailSize.small)
        assert kept is not None and kept != media.find_thumbnail(sha, "image/webp")

        # Each ETag is answered 304 by its own size only.
        held = {"If-None-Match": small.headers["etag"]}
        assert client.get("/images/3/thumbnail?size=240", headers=held).status_code == 304
        assert client.get("/images/3/thumbnail", headers=held).status_code == 200

        media.remove(sha)
        assert media.find_thumbnail(sha, "image/webp", ThumbnailSize.small) is None
        assert media.find_thumbnail(sha, "image/webp") is None


def test_a_size_not_offered_is_a_422_naming_it(tmp_path: Path) -> None:
    with fake_gateway(tmp_path) as (client, _):
        for size in ("100", "0", "big"):
            response = client.get(f"/images/2/thumbnail?size={size}")
            assert response.status_code == 422, response.text
            body = response.json()
            assert body["error_type"] == "validation_error"
            assert "size" in str(body["details"])
