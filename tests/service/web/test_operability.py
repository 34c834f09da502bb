"""Request ids (in responses and in log lines), the app's access log and CORS, through the test client."""

from __future__ import annotations

import logging

import pytest

from service.logs import JsonFormatter, RequestIdFilter, logging_config


class _Lines(logging.Handler):
    """What the service's own handler would write: records through its filter and formatter."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.setFormatter(JsonFormatter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records.append(record)


@pytest.fixture
def lines():
    handler = _Lines()
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_a_safe_request_id_is_kept_and_returned(client):
    response = client.get("/v2/health/live", headers={"X-Request-ID": "trace-42.a:b/c"})
    assert response.headers["X-Request-ID"] == "trace-42.a:b/c"


@pytest.mark.parametrize("given", ["", "x" * 129, "bad id", "<script>", "a\"b", "é"])
def test_an_unsafe_or_missing_request_id_is_replaced_by_a_generated_one(client, given):
    headers = {"X-Request-ID": given} if given else {}
    response = client.get("/v2/models/nope", headers=headers)  # an error response carries it too
    rid = response.headers["X-Request-ID"]
    assert response.status_code == 404 and rid != given and len(rid) == 32 and rid.isalnum()


def test_every_log_line_of_a_request_carries_its_id(make_app, lines, mnist):
    client = make_app(access_log=True).test_client()
    client.post("/v2/models/nope/infer", json={}, headers={"X-Request-ID": "req-404"})
    client.post("/v2/models/mnist-tiny/infer", headers={"X-Request-ID": "req-200"},
                json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8",
                                  "data": mnist["test_x"][0].ravel().tolist()}]})
    ours = {r.request_id: r for r in lines if r.name == "service.access"}
    assert "POST /v2/models/mnist-tiny/infer 200" in ours["req-200"].getMessage()
    assert "POST /v2/models/nope/infer 404" in ours["req-404"].getMessage()
    # The error handler's line of the 404 carries the same id.
    assert any(r.request_id == "req-404" and r.name == "service.web.error_handlers" for r in lines)
    assert all(r.request_id in ("req-404", "req-200") for r in lines)


def test_an_access_line_cannot_be_forged_through_the_path(make_app, lines):
    client = make_app(access_log=True).test_client()
    client.get("/v2/nope%0A2026-01-01 INFO forged", headers={"X-Request-ID": "forge"})
    (line,) = [r.getMessage() for r in lines if r.name == "service.access" and r.request_id == "forge"]
    assert "\n" not in line and "\\n2026" in line


def test_no_access_log_by_default(client, lines):
    client.get("/v2/health/live")
    assert not [r for r in lines if r.name == "service.access"]


def test_log_lines_outside_a_request_say_so():
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello", (), None)
    RequestIdFilter().filter(record)
    assert record.request_id == "-" and '"request_id":"-"' in JsonFormatter().format(record)
    assert "%(request_id)s" in logging_config("text", "info")["formatters"]["default"]["format"]


def test_cors_is_off_by_default(client):
    response = client.get("/v2/health/live", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options("/v2/models/mnist-tiny/infer", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_allows_the_configured_origins_and_answers_preflight(make_app):
    client = make_app(cors_origins="https://app.example.com, http://localhost:3000").test_client()
    preflight = client.options("/v2/models/mnist-tiny/infer", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    response = client.get("/v2/health/live", headers={"Origin": "https://app.example.com"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]
    other = client.get("/v2/health/live", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cors_settings_are_checked():
    from service.config import ConfigError, ServiceConfig
    assert ServiceConfig(cors_origins="*").cors_origin_list == ["*"]
    with pytest.raises(ConfigError, match="cors_origins"):
        ServiceConfig(cors_origins="app.example.com/path")
