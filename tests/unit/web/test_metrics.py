from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from glimpse.web.handlers import install_error_handlers
from glimpse.web.metrics import ServiceMetrics, install_metrics


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_metrics(app, ServiceMetrics("test"))

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app


def test_requests_are_counted_by_route_template_and_status() -> None:
    client = TestClient(make_app())
    for i in range(3):
        assert client.get(f"/items/{i}").status_code == 200
    assert client.get("/items/nope").status_code == 422
    assert client.get("/missing").status_code == 404
    text = client.get("/metrics").text
    assert (
        'glimpse_http_requests_total{method="GET",route="/items/{item_id}",'
        'service="test",status="200"} 3.0'
    ) in text
    assert 'route="/items/{item_id}",service="test",status="422"} 1.0' in text
    assert 'route="<unmatched>",service="test",status="404"} 1.0' in text
    assert "glimpse_http_request_seconds_bucket" in text


def test_each_app_has_its_own_registry() -> None:
    first, second = TestClient(make_app()), TestClient(make_app())
    first.get("/items/1")
    assert 'status="200"} 1.0' in first.get("/metrics").text
    assert 'route="/items/{item_id}"' not in second.get("/metrics").text
