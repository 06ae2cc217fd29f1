"""Glimpse contracts: every body that crosses a service boundary, and the one error shape.

Each service imports its request and response models from here, so a change to a body is a
change to one file, and the committed OpenAPI documents show when it drifts.
"""
