"""Shared fixtures. Service-specific fixtures live in each tests/*/<service>/conftest.py."""

from __future__ import annotations

import os

# Tests never reach a model hub: open_clip and huggingface_hub must fail fast if asked.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
