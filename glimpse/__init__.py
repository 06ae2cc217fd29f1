"""Glimpse: text-to-image and image-to-image search over your own photo collection."""
