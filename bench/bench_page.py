"""The results page on a phone, in headless chromium: the bytes of the first 24 grid images and
the largest contentful paint, with the grid's srcset (240 px thumbnails where tiles are small)
against the page before it (app.js of BEFORE, 320 px thumbnails only), runs alternated.

    python bench/bench_page.py [--runs 5] [--csv bench/results/bench_page.csv]

The real stack (tiny model) with the browser tests' 53 sample photos, every thumbnail made
before the first run. Each run is a fresh browser context (empty cache) on Lighthouse's
phone: 412x915 at 1.75x, CPU slowed 4x (Emulation.setCPUThrottlingRate) and the network
throttled like Lighthouse's devtools mode for mobile (562.5 ms latency, 1,474.56 kbit/s down).
LCP is the last largest-contentful-paint entry once the 24 images have loaded. app.js (the
working tree's, or BEFORE's from git) is served unthrottled on both sides alike, so that only
it differs; run with it committed, since the rows name HEAD.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import append_rows  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, INGEST_BATCH  # noqa: E402
from tests.e2e.photos import sample_photos  # noqa: E402
from tests.support.stack import start_stack  # noqa: E402

# The last commit whose grid asked for the 320 px thumbnail only.
BEFORE = "05fdc23"
QUERY = "a photo"
GRID_IMAGES = 24
PHONE = {"viewport": {"width": 412, "height": 915}, "device_scale_factor": 1.75,
         "is_mobile": True, "has_touch": True}
# Lighthouse's mobile "devtools" throttling: 150 ms RTT x 3.75, 1.6 Mbit/s x 0.9.
NETWORK = {"offline": False, "latency": 562.5, "downloadThroughput": 1474.56 * 1024 / 8,
           "uploadThroughput": 675 * 1024 / 8}
CPU_SLOWDOWN = 4

LCP_JS = """() => new Promise(resolve => new PerformanceObserver(list => {
    const last = list.getEntries().at(-1);
    resolve({ms: last.startTime, what: last.element?.tagName ?? last.url});
}).observe({type: "largest-contentful-paint", buffered: true}))"""

# Body bytes of the first n grid images, from the Resource Timing entries of what each took.
BYTES_JS = """n => {
    const taken = [...document.querySelectorAll('#results .tile img')].slice(0, n)
        .map(i => i.currentSrc);
    const sizes = new Map(performance.getEntriesByType('resource')
        .map(e => [e.name, e.encodedBodySize]));
    return {bytes: taken.reduce((sum, src) => sum + (sizes.get(src) ?? NaN), 0),
            small: taken.filter(src => src.includes('size=240')).length};
}"""


def app_js(commit: str) -> bytes:
    return subprocess.run(["git", "show", f"{commit}:glimpse/frontend/app.js"], cwd=REPO,
                          check=True, capture_output=True).stdout


def ingest(url: str) -> list[int]:
    """The sample photos, ingested; with both thumbnails of each made now, not in a run."""
    photos = sample_photos()
    ids = []
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for start in range(0, len(photos), INGEST_BATCH):
            batch = photos[start:start + INGEST_BATCH]
            files = [("files", (p.path, p.data, p.content_type)) for p in batch]
            response = client.post("/ingest", files=files)
            response.raise_for_status()
            ids += [item["id"] for item in response.json()["items"]]
        for image_id in ids:
            for query in ("", "?size=240"):
                client.get(f"/images/{image_id}/thumbnail{query}").raise_for_status()
    return ids


def one_run(browser: Any, url: str, script: bytes) -> dict[str, Any]:
    context = browser.new_context(**PHONE)
    try:
        context.route("**/app.js", lambda route: route.fulfill(
            body=script, content_type="text/javascript", headers={"Cache-Control": "no-cache"}))
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", NETWORK)
        page.set_default_timeout(120_000)
        page.goto(f"{url}/?all=1&q={QUERY.replace(' ', '+')}")
        page.wait_for_function(
            """n => {
                const imgs = [...document.querySelectorAll('#results .tile img')].slice(0, n);
                return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0);
            }""", arg=GRID_IMAGES)
        return {**page.evaluate(LCP_JS), **page.evaluate(BYTES_JS, GRID_IMAGES)}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--csv", type=Path, help="append the rows to this CSV")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    sides = {f"before: 320 px only (app.js of {BEFORE})": app_js(BEFORE),
             "glimpse": (REPO / "glimpse" / "frontend" / "app.js").read_bytes()}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp, start_stack(Path(tmp)) as stack:
        ingest(stack.gateway_url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            one_run(browser, stack.gateway_url, sides["glimpse"])  # warms the services
            for n in range(args.runs):
                for side, script in sides.items():
                    result = one_run(browser, stack.gateway_url, script)
                    runs[side].append(result)
                    print(f"run {n + 1} {side}: LCP {result['ms']:.0f} ms ({result['what']}), "
                          f"{result['bytes']:,} B in {GRID_IMAGES} images, "
                          f"{result['small']} at 240 px")
            browser.close()
    for side, results in runs.items():
        print(f"{side}: LCP median {statistics.median(r['ms'] for r in results):.0f} ms, "
              f"bytes median {statistics.median(r['bytes'] for r in results):,.0f}")
    if args.csv:
        load = os.getloadavg()[0]
        rows = []
        for n in range(args.runs):
            for side, results in runs.items():
                r = results[n]
                note = (f"run {n + 1} of {args.runs}; LCP element {r['what']}; "
                        f"{r['small']} of {GRID_IMAGES} at 240 px; load avg {load:.1f}")
                rows.append({"what": f"results page LCP: phone 412x915 at 1.75x, CPU 4x, "
                                     f"Lighthouse mobile network, {QUERY!r} (tiny model)",
                             "variant": side, "value": f"{r['ms']:.0f}", "unit": "ms",
                             "note": note})
                rows.append({"what": f"bytes of the first {GRID_IMAGES} grid images: phone "
                                     "412x915 at 1.75x",
                             "variant": side, "value": str(r["bytes"]), "unit": "bytes",
                             "note": note})
        append_rows(args.csv.resolve(), rows, "python bench/bench_page.py --runs "
                    f"{args.runs} --csv {args.csv}")


if __name__ == "__main__":
    main()
