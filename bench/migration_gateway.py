"""A BENCHMARK WRAPPER of the gateway app, for bench/bench_migration.py: glimpse.gateway.main's
app with the migration throttle's floor (migration.MIN_IDLE_MS) set from BENCH_MIN_IDLE_MS, so
runs can compare floors without a product setting that no deployment needs.

    uvicorn bench.migration_gateway:app
"""

from __future__ import annotations

import os

from glimpse.gateway import migration
from glimpse.gateway.main import app

if "BENCH_MIN_IDLE_MS" in os.environ:
    migration.MIN_IDLE_MS = float(os.environ["BENCH_MIN_IDLE_MS"])

__all__ = ["app"]
