"""RELIABILITY.md (fuzz): the image decoders and the JSON endpoints never answer 5xx.

Hypothesis, bounded by max_examples and a per-example deadline, no example database on disk.
The decoders (the encoder's and the gateway's) are fuzzed in-process with mutated real images
and plain random bytes: they must give an image or a 4xx GlimpseError, nothing else. The same
mutations of JPEG, PNG, WebP and TIFF files (byte flips, EXIF and TIFF tag types, truncation,
header sizes) are posted through the encoder process, which must answer 200 or 4xx with its
resident memory within the documented bound (issue 25); the files that found F2, F3, F4 and
F8 stay as regression cases. The JSON
endpoints of the gateway, the encoder and an index are fuzzed over HTTP with arbitrary JSON,
JSON shaped like their bodies, and bytes that are not JSON at all.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glimpse.contracts.errors import GlimpseError
from tests.reliability._images import (
    DECODE_BYTES_PER_PIXEL,
    PeakGrowth,
    float_tiffs,
    fuzz_seeds,
    gradient,
    long_thin_pngs,
    malformed_images,
    mistyped_exif_jpeg,
    odd_valid_images,
    png_bytes,
    resized_header,
    retyped_tag,
    tiff_entries,
)
from tests.reliability._services import index_process
from tests.support.procs import ServiceProcess

FUZZ = settings(
    max_examples=150,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Issue 25's files, kept as seeds and as explicit cases (test_fuzz_regressions_through_the_
# encoder): F2 and F3 long and thin PNGs, F4 a JPEG whose EXIF types ResolutionUnit as BYTE,
# F8 float TIFFs (good and broken).
REGRESSIONS: dict[str, bytes] = {
    **long_thin_pngs(),
    "f4_exif_resolution_unit_byte.jpg": mistyped_exif_jpeg(),
    **{f"f8_{name}": data for name, data in float_tiffs().items()},
}
FORMAT_SEEDS = fuzz_seeds()
SEEDS = [data for data, _ in odd_valid_images().values()] + [
    data for data, _ in malformed_images().values() if data
] + list(FORMAT_SEEDS.values()) + [d for n, d in REGRESSIONS.items() if "60000000" not in n]

# Sides a mutated header declares: none, tiny, the 32:1 edge at 60 MP, over 16 and 31 bits.
SIDES = st.sampled_from([0, 1, 2, 3, 31, 32, 33, 224, 1369, 7745, 30_000, 43_808, 65_535,
                         65_536, 1 << 24, 60_000_000, (1 << 31) - 1, (1 << 32) - 1])


@st.composite
def mutated_images(draw: st.DrawFn, seeds: list[bytes] = SEEDS) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero", "retype",
                                   "resize"]))
        if not data:
            break
        if op == "retype":  # an EXIF or TIFF tag given another type (F4, F8) and count
            entries, order = tiff_entries(bytes(data))
            if entries:
                entry = draw(st.sampled_from(entries))
                count = draw(st.sampled_from([None, 0, 1, 2, 7, 1 << 16, (1 << 32) - 1]))
                data = bytearray(retyped_tag(bytes(data), entry, order,
                                             draw(st.integers(0, 13)), count))
            continue
        if op == "resize":  # the header declares another size (F2, F3)
            data = bytearray(resized_header(bytes(data), draw(SIDES), draw(SIDES)))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "repeat":
            end = min(len(data), at + draw(st.integers(1, 512)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        else:
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:end] = bytes(end - at)
    return bytes(data)


IMAGE_BYTES = st.one_of(mutated_images(), st.binary(max_size=2048))
# What is posted to the encoder: the four formats of the issue, mutated.
FORMAT_BYTES = mutated_images(list(FORMAT_SEEDS.values()))


def _decoder_outcome(decode: Any, data: bytes) -> str:
    # Production runs with Python's default warning filters; the suite turns warnings into
    # errors, which would report PIL's "possibly corrupt EXIF" notices as crashes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decode(data)
        except GlimpseError as exc:
            assert 400 <= exc.status < 500, (exc.status, exc.message)
            return exc.error_type
    return "ok"


def test_fuzz_encoder_image_decoder(figure: Any) -> None:
    from glimpse.encoder.images import ImageLimits, decode_image

    limits = ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=60_000_000)
    seen: Counter[str] = Counter()

    @FUZZ
    @given(IMAGE_BYTES)
    def run(data: bytes) -> None:
        seen[_decoder_outcome(lambda d: decode_image(d, limits, 224), data)] += 1

    run()
    figure(examples=sum(seen.values()), outcomes=dict(seen), crashes=0)


def test_fuzz_gateway_image_checks(figure: Any) -> None:
    # The gateway decodes when it makes a thumbnail on first view (make_thumbnail), and reads
    # the stored type from the first bytes (sniff_content_type): both see every input.
    from glimpse.gateway.images import make_thumbnail, sniff_content_type

    seen: Counter[str] = Counter()

    @FUZZ
    @given(IMAGE_BYTES)
    def run(data: bytes) -> None:
        outcome = _decoder_outcome(functools.partial(make_thumbnail, max_pixels=80_000_000), data)
        seen[f"make_thumbnail: {outcome}"] += 1
        seen[f"sniff_content_type: {sniff_content_type(data)}"] += 1

    run()
    figure(examples=sum(seen.values()), outcomes=dict(seen), crashes=0)


# The shared stack's encoder keeps the default ENCODER_MAX_PIXELS.
ENCODER_MAX_PIXELS = 60_000_000
# What each regression case must get from the encoder alone: F4 and a valid float TIFF are
# pictures; the rest are refused as invalid_image.
REGRESSION_PICTURES = ("f4_exif_resolution_unit_byte.jpg", "f8_float32.tif", "f8_float32_nan.tif")


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_fuzz_regressions_through_the_encoder(stack: Any, name: str) -> None:
    with httpx.Client(base_url=stack.encoder.url, timeout=60) as enc:
        r = enc.post("/v1/embed/image", files=[("files", (name, REGRESSIONS[name],
                                                          "application/octet-stream"))])
    if name in REGRESSION_PICTURES:
        assert r.status_code == 200 and r.json()["embeddings"][0] is not None, r.text[:300]
    else:
        assert r.status_code == 422, (r.status_code, r.text[:300])
        assert r.json()["error_type"] == "invalid_image", r.text[:300]


def test_fuzz_images_through_the_encoder(stack: Any, figure: Any) -> None:
    """Mutated JPEG, PNG, WebP and TIFF files posted to the encoder process, alone or beside a
    good file: every answer 200 or 4xx, the good file always embedded, and the process's
    resident memory within DECODE_BYTES_PER_PIXEL x the pixel cap (one decode thread)."""
    good = png_bytes(gradient((40, 30), seed=77))
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    with httpx.Client(base_url=stack.encoder.url, timeout=60) as enc, \
            PeakGrowth(stack.encoder.proc.pid) as peak:

        @settings(FUZZ, max_examples=3000, deadline=20_000)
        @given(FORMAT_BYTES, st.booleans())
        def run(data: bytes, beside_good: bool) -> None:
            files = [("files", ("fuzzed", data, "application/octet-stream"))]
            if beside_good:
                files.append(("files", ("good.png", good, "image/png")))
            r = enc.post("/v1/embed/image", files=files)
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"{r.status_code} {data[:200]!r} -> {r.text[:300]}")
            assert r.status_code < 500, failures[-1]
            body = r.json()
            if r.status_code != 200:
                assert not beside_good and body["error_type"], r.text[:300]
                outcomes[body["error_type"]] += 1
                return
            errors = body.get("errors") or [None] * len(files)
            outcomes[errors[0]["error_type"] if errors[0] else "embedded"] += 1
            if beside_good:
                assert errors[1] is None and body["embeddings"][1] is not None, r.text[:300]

        run()
    bound = DECODE_BYTES_PER_PIXEL * ENCODER_MAX_PIXELS
    figure(examples=sum(statuses.values()), statuses=dict(statuses), outcomes=dict(outcomes),
           answers_5xx=len(failures), rss_growth_bytes=peak.growth, bound_bytes=bound,
           exact_high_water_mark=peak.exact)
    assert peak.growth <= bound, f"the encoder's memory rose by {peak.growth} bytes"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20,
)
WEIRD_SCALARS = st.sampled_from(
    [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1.5, float("nan"), float("inf"), "", "1",
     "a" * 2000, None, True, [], {}, "0" * 64, "\x00", "\ud7ff"]
)
VALUE = st.one_of(JSON, WEIRD_SCALARS)
VECTOR = st.one_of(
    st.lists(st.floats(width=32), min_size=0, max_size=70),
    st.lists(st.floats(-1, 1, width=32), min_size=64, max_size=64),
    st.text(max_size=400),
    VALUE,
)


def _shaped(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=keys)


BODIES: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "gateway /search/text": ("gateway", _shaped(
        {"query": st.one_of(st.text(max_size=1200), VALUE), "k": VALUE, "offset": VALUE})),
    "gateway /search": ("gateway", _shaped({
        "terms": st.one_of(VALUE, st.lists(_shaped({
            "text": st.one_of(st.text(max_size=50), VALUE),
            "image_id": VALUE, "weight": VALUE}), max_size=20)),
        "k": VALUE, "offset": VALUE})),
    "gateway /ingest/check": ("gateway", _shaped(
        {"sha256": st.one_of(VALUE, st.lists(st.one_of(st.text(max_size=70), VALUE)))})),
    "encoder /v1/embed/text": ("encoder", _shaped(
        {"texts": st.one_of(VALUE, st.lists(st.one_of(st.text(max_size=80), VALUE),
                                            max_size=8)),
         "encoding": VALUE})),
    "index /v1/search": ("index", _shaped({
        "vectors": st.one_of(VALUE, st.lists(VECTOR, max_size=3)), "k": VALUE,
        "nprobe": VALUE, "exact": VALUE, "exclude_ids": VALUE})),
    "index /v1/items": ("index", _shaped({"items": st.one_of(VALUE, st.lists(_shaped({
        "vector": VECTOR, "path": st.one_of(st.text(max_size=30), VALUE),
        "key": st.one_of(st.text(max_size=30), VALUE), "meta": VALUE}), max_size=3))})),
    "index /v1/keys/missing": ("index", _shaped(
        {"keys": st.one_of(VALUE, st.lists(st.one_of(st.text(max_size=70), VALUE)))})),
    "index /v1/keys/ids": ("index", _shaped(
        {"keys": st.one_of(VALUE, st.lists(st.one_of(st.text(max_size=70), VALUE)))})),
}


@pytest.fixture(scope="module")
def fuzz_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """An index of its own: fuzzed adds must not leave odd items in the shared stack."""
    root = tmp_path_factory.mktemp("fuzz-index")
    proc = index_process(root, root / "data").start(90)
    yield proc
    proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("target", list(BODIES))
def test_fuzz_json_endpoint(target: str, stack: Any, fuzz_index: ServiceProcess,
                            figure: Any) -> None:
    service, strategy = BODIES[target]
    path = target.split(" ", 1)[1]
    base = {"gateway": stack.gateway_url, "encoder": stack.encoder.url,
            "index": fuzz_index.url}[service]
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    body_or_bytes = st.one_of(
        strategy.map(lambda b: json.dumps(b, allow_nan=True).encode()),
        JSON.map(lambda b: json.dumps(b, allow_nan=True).encode()),
        st.binary(max_size=200),
    )
    with httpx.Client(base_url=base, timeout=30,
                      headers={"Authorization": "Bearer reliability-suite-key",
                               "Content-Type": "application/json"}) as http:

        @settings(FUZZ, max_examples=120)
        @given(body_or_bytes)
        def run(body: bytes) -> None:
            r = http.post(path, content=body)
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"{r.status_code} {body[:300]!r} -> {r.text[:300]}")
            assert r.status_code < 500, failures[-1]
            if r.status_code >= 400:
                assert r.json()["error_type"], r.text

        run()
    figure(examples=sum(statuses.values()), statuses=dict(statuses), answers_5xx=len(failures))
