"""Gateway settings: every knob has a default that works for a local run (env prefix GATEWAY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from glimpse.contracts import index as index_contract
from glimpse.gateway.replicas import split_urls


class Settings(BaseSettings):
    """The gateway's configuration, read from ``GATEWAY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__")

    # Upstreams.
    encoder_url: str = Field(
        "http://127.0.0.1:8001",
        description="Base URL of glimpse.encoder; several replicas: comma-separated URLs, "
        "or one name that resolves to several addresses (compose --scale).",
    )
    index_url: str = Field(
        "http://127.0.0.1:8002",
        description="Base URL of glimpse.index; several (comma-separated) only for replicas "
        "that share their data (the Milvus backend).",
    )
    encoder_timeout_s: float = Field(
        60.0, gt=0, description="Read timeout for encoder calls (an ingest batch can be slow); "
        "the other upstream timings are constants in main.py."
    )
    # Media store.
    media_dir: Path = Field(
        Path("data/media"), description="Where originals and thumbnails are stored."
    )
    libraries: str | None = Field(
        None,
        description="Photo folders indexed in place and kept in sync: name=/path, "
        "comma-separated (docs/library.md).",
    )
    library_watch: Literal["auto", "inotify", "polling", "off"] = Field(
        "auto", description="How libraries are watched; auto: polling on network filesystems."
    )
    library_exclude: str = Field(
        "**/.thumbnails/**,*.tmp,*.part,*.crdownload",
        description="Comma-separated globs of library paths skipped (hidden files always are).",
    )
    fsync: bool = Field(
        True, description="fsync media files and their folder before the index add (durability)."
    )

    # Security.
    api_key: str | None = Field(
        None, description="When set, write routes need 'Authorization: Bearer <key>'."
    )
    public_read: bool = Field(
        True, description="Search and image routes open without a key (false: they need it too)."
    )
    # Limits (an image's bytes and pixels are the encoder's: clients.EncoderClient.limits).
    max_body_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest request body of an /ingest call."
    )
    max_files_per_request: int = Field(64, ge=1, description="Files per /ingest request.")
    max_result_window: int = Field(
        1000, ge=1, le=index_contract.MAX_K,
        description="Largest k + offset of a search (deeper pages are refused); at most the "
        "index's largest k.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next piece of a request body, else 408."
    )
    record_ttl_s: float = Field(
        5.0, ge=0, description="How long a kept image record is trusted: a delete through "
        "another gateway is seen here within this time; 0: ask the index every time."
    )

    @field_validator("encoder_url", "index_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        split_urls(value)  # a bad URL fails at start, naming itself
        return value

    @field_validator("libraries")
    @classmethod
    def _libraries(cls, value: str | None) -> str | None:
        from glimpse.gateway.library import parse_libraries

        parse_libraries(value)  # a bad entry fails at start, naming itself
        return value

    @field_validator("api_key", "libraries", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `GATEWAY_API_KEY=` in a compose file means "no key", not "the empty key".
        return None if value == "" else value

    @model_validator(mode="after")
    def _key_long_enough(self) -> Settings:
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("GATEWAY_API_KEY must be at least 8 characters long")
        return self
