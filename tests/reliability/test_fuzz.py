"""RELIABILITY.md (fuzz): the image decoders and the JSON endpoints never answer 5xx.

Hypothesis, bounded by max_examples and a per-example deadline, no example database on disk.
The decoders (the encoder's and the gateway's) are fuzzed in-process with mutated real images
and plain random bytes: they must give an image or a 4xx GlimpseError, nothing else. The JSON
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
from tests.reliability._images import malformed_images, odd_valid_images
from tests.reliability._services import index_process
from tests.support.procs import ServiceProcess

FUZZ = settings(
    max_examples=150,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEEDS = [data for data, _ in odd_valid_images().values()] + [
    data for data, _ in malformed_images().values() if data
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero"]))
        if not data:
            break
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
    # The gateway reads headers at ingest (inspect_image) and decodes when it makes a thumbnail
    # on first view (make_thumbnail): both see every input.
    from glimpse.gateway.images import inspect_image, make_thumbnail

    seen: Counter[str] = Counter()

    @FUZZ
    @given(IMAGE_BYTES)
    def run(data: bytes) -> None:
        for check in (inspect_image, make_thumbnail):
            outcome = _decoder_outcome(functools.partial(check, max_pixels=80_000_000), data)
            seen[f"{check.__name__}: {outcome}"] += 1

    run()
    figure(examples=sum(seen.values()), outcomes=dict(seen), crashes=0)


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
