"""Web pieces the services share: the form adapter and the orjson response."""
