"""Issue 21's limit: at most 50 environment variables in all, whoever reads them."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
# A variable of ours read outside the settings classes: by the CLI, or by an image's command.
READ = re.compile(
    r"""(?:os\.environ(?:\.get)?[\[(]\s*["']|\$\{)((?:GLIMPSE|GATEWAY|ENCODER|INDEX)_[A-Z0-9_]+)"""
)


def settings_variables() -> set[str]:
    names = set()
    for package in ("glimpse.encoder", "glimpse.index", "glimpse.gateway"):
        module = importlib.import_module(f"{package}.config")
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, BaseSettings) and cls is not BaseSettings:
                prefix = cls.model_config.get("env_prefix", "")
                names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def other_variables() -> set[str]:
    files = [*ROOT.joinpath("glimpse").rglob("*.py"), *ROOT.joinpath("docker").glob("*")]
    return {name for f in files if f.is_file() for name in READ.findall(f.read_text())}


def test_the_reader_finds_the_variables_read_outside_the_settings() -> None:
    assert {"GATEWAY_WORKERS", "GLIMPSE_API_KEY"} <= other_variables()


def test_at_most_50_variables_in_all() -> None:
    every = settings_variables() | other_variables()
    assert len(every) <= 50, sorted(every)
