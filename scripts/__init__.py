"""Glimpse's command-line scripts; importable so tests call them without a subprocess."""
