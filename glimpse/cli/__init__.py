"""The `glimpse` command: ingest, dev and demo."""
