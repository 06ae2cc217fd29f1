"""CI and packaging helpers: the OpenAPI export, the compose smoke test, test dependencies."""
