"""Glimpse encoder service: text and image bytes in, L2-normalised CLIP vectors out (port 8001)."""
