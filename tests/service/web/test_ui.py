"""The web pages and the public routes they use, through the Flask test client over a real runtime: the
preprocessed input on :classify, manifests, the plots training wrote, live figures, the docs page."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract import images, routing_state, routing_store
from service.contract.manifest import REPORT_FILES, read_manifest
from service.web import imaging
from service.web.card import duration, sections
from service.web.figures import quantile
from training import reports

HOOKS = ("pad", "upload", "model", "prediction", "probabilities", "preview")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def ui_client(make_app, ui_root):
    """A client of an app serving the shipped mnist-cnn and the tiny models."""
    return make_app(model_dir=ui_root).test_client()


def drawing(digit: np.ndarray) -> bytes:
    """An MNIST digit as a person's drawing: dark ink on white paper, large and off-centre, as PNG."""
    paper = np.full((200, 240), 255, np.uint8)
    big = np.asarray(Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BILINEAR))
    paper[20:132, 100:212] = big
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG")
    return buffer.getvalue()


# What Chromium and Firefox send for a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_the_root_answers_kserve_v1_liveness_to_a_client_that_does_not_ask_for_html(ui_client):
    for accept in ("*/*", "application/json", None):
        response = ui_client.get("/", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200 and response.json == {"status": "alive"}
    assert ui_client.get("/ui/").content_type.startswith("text/html")


def test_the_page_is_served_at_the_root_and_under_ui_with_its_hooks(ui_client):
    for path in ("/", "/ui/"):
        page = ui_client.get(path, headers={"Accept": BROWSER_ACCEPT})
        assert page.status_code == 200 and page.content_type.startswith("text/html")
        html = page.get_data(as_text=True)
        assert all(f'data-testid="{hook}"' in html for hook in HOOKS)
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_the_pages_load_nothing_from_another_host(ui_client):
    pages = [ui_client.get(p, headers={"Accept": BROWSER_ACCEPT}).get_data(as_text=True)
             for p in ("/", "/ui/models/mnist-cnn/1")]
    links = [link for html in pages for link in re.findall(r'(?:src|href)="([^"]*)"', html)]
    assert links and all(link.startswith(("/", "#", "data:")) for link in links), links
    for asset in ("pad.js", "model.js", "ui.css"):
        with ui_client.get(f"/ui/static/{asset}") as response:  # a file response: closed after reading
            assert response.status_code == 200
            assert not re.search(r"https?://|//[a-z]", response.get_data(as_text=True)), asset


def test_classify_with_include_input_returns_exactly_what_the_model_received(ui_client, mnist, ui_root):
    image = drawing(mnist["test_x"][0])
    body = ui_client.post("/v1/models/mnist-cnn:classify?include_input=true", data=image,
                          content_type="image/png").json
    shown = np.asarray(body["predictions"][0]["input"])
    spec = read_manifest(ui_root / "mnist-cnn" / "1").input
    assert shown.shape == (1, 28, 28)
    assert np.array_equal(shown, images.to_input(imaging.decode(image), spec))
    # The same pixels sent as pixels get the same answer: this is the model's input, not an illustration.
    again = ui_client.post("/v1/models/mnist-cnn:predict",
                           json={"instances": shown.tolist(), "dtype": "uint8"}).json["predictions"][0]
    assert again["label"] == body["predictions"][0]["label"] == str(mnist["test_y"][0])
    assert again["probabilities"] == pytest.approx(body["predictions"][0]["probabilities"], abs=1e-6)
    plain = ui_client.post("/v1/models/mnist-cnn:classify", data=image, content_type="image/png").json
    assert "input" not in plain["predictions"][0]


def test_include_input_must_be_a_boolean(ui_client, mnist):
    response = ui_client.post("/v1/models/mnist-cnn:classify?include_input=perhaps",
                              data=drawing(mnist["test_x"][0]), content_type="image/png")
    assert response.status_code == 400 and "include_input" in response.json["error"]


def test_manifest_route_gives_the_artifacts_manifest_and_its_plots(ui_client, ui_root):
    body = ui_client.get("/v1/models/mnist-cnn/versions/1/manifest").json
    on_disk = json.loads((ui_root / "mnist-cnn" / "1" / "manifest.json").read_text())
    assert body.pop("reports") == ["curves.png", "confusion.png", "mistakes.png"]
    # Written before manifests had a task or a calibration: served with the defaults the service reads it
    # with (temperature 1, no "not a digit" score).
    calibration = {"temperature": 1.0, "method": "temperature", "fitted_on": "", "examples": 0,
                   "val_loss_before": None, "val_loss_after": None}
    assert body == on_disk | {"task": "multiclass", "threshold": 0.5, "calibration": calibration,
                              "outliers": None,
                              "input": on_disk["input"] | {"kind": "image", "features": [], "scaling": {}}}
    assert ui_client.get("/v1/models/mnist-tiny/manifest").json["version"] == "2"
    assert ui_client.get("/v1/models/nope/manifest").status_code == 404


def test_plots_are_served_from_the_artifact_and_nothing_else_is(ui_client, ui_root):
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        with ui_client.get(f"/v1/models/mnist-cnn/versions/1/files/{name}") as response:
            assert response.status_code == 200 and response.mimetype == "image/png"
            assert response.get_data() == (ui_root / "mnist-cnn" / "1" / name).read_bytes()
    for name in ("model.pt", "manifest.json", "metrics.jsonl", "..", "nope.png"):
        response = ui_client.get(f"/v1/models/mnist-cnn/versions/1/files/{name}")
        assert response.status_code == 404 and "error" in response.json, name
    linked = ui_client.get("/v1/models/mnist-tiny/versions/1/files/curves.png")
    assert linked.status_code == 404  # a link could point anywhere: not handed out
    # The plots the page names first are the ones training draws.
    assert REPORT_FILES == (reports.CURVES_FILE, reports.CONFUSION_FILE, reports.MISTAKES_FILE)


def test_any_other_plot_training_adds_is_listed_and_served_after_the_usual_ones(make_app, ui_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(ui_root / "mnist-cnn", root / "mnist-cnn")
    (root / "mnist-cnn" / "1" / "roc.png").write_bytes((root / "mnist-cnn" / "1" / "curves.png").read_bytes())
    client = make_app(model_dir=root).test_client()
    first = client.get("/v1/models/mnist-cnn/versions/1/manifest").json
    assert first["reports"] == [*REPORT_FILES, "roc.png"]
    # Version 2 (issue 26) also has its reliability diagram, its "not a digit" scores and (issue 28) its
    # class-average attributions.
    assert client.get("/v1/models/mnist-cnn/versions/2/manifest").json["reports"] == [
        *REPORT_FILES, "attributions.png", "outliers.png", "reliability.png"]
    with client.get("/v1/models/mnist-cnn/versions/1/files/roc.png") as response:
        assert response.status_code == 200
    assert 'files/roc.png"' in client.get("/ui/models/mnist-cnn/1").get_data(as_text=True)


def test_model_page_shows_the_manifest_plots_and_live_figures(ui_client):
    page = ui_client.get("/ui/models/mnist-cnn/1")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    sha = "234ca9780e12725781c06b035f8d37f0084519bdfd155f2a4f31aaf48f8e83f9"
    stats = 'data-stats="/v1/models/mnist-cnn/versions/1/stats"'
    for text in ("17,758", "99.49 %", "2 min 2 s", sha, "onecycle", "1 x 28 x 28", stats):
        assert text in html, text
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        assert f'src="/v1/models/mnist-cnn/versions/1/files/{name}"' in html
    newest = ui_client.get("/ui/models/mnist-tiny").get_data(as_text=True)
    assert "version 2" in newest and "no training plots" in newest
    assert ui_client.get("/ui/models/nope").status_code == 404


def _stats(client) -> dict:
    return client.get("/v1/models/mnist-cnn/stats").json  # the default version's, which gets the requests


def test_stats_count_this_models_requests_latency_and_batches(ui_client, mnist):
    before = _stats(ui_client)
    for digit in mnist["test_x"][:3]:
        ui_client.post("/v1/models/mnist-cnn:classify", data=drawing(digit), content_type="image/png")
    ui_client.post("/v1/models/mnist-cnn:classify", data=b"no image", content_type="image/png")
    ui_client.get("/v2/models/mnist-cnn")  # metadata: not an inference request
    deadline = time.monotonic() + 20  # the runtime records a batch just after answering it
    while (after := _stats(ui_client))["batches"]["images"] < before["batches"]["images"] + 3:
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert after["requests"]["total"] == before["requests"]["total"] + 4
    assert after["requests"]["by_status"]["400"] == before["requests"]["by_status"].get("400", 0) + 1
    latency = after["latency_seconds"]
    assert latency["count"] == before["latency_seconds"]["count"] + 4
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert after["batches"]["images"] == before["batches"]["images"] + 3
    assert sum(after["batches"]["sizes"].values()) == after["batches"]["count"]
    assert after["compute_seconds"]["p50"] > 0


def test_quantile_interpolates_within_a_bucket_as_prometheus_does():
    buckets = [(0.1, 2.0), (0.2, 6.0), (0.4, 10.0), (float("inf"), 10.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.175)  # rank 5 of 10: 3/4 into (0.1, 0.2]
    assert quantile(buckets, 0.1) == pytest.approx(0.05)
    assert quantile(buckets, 1.0) == pytest.approx(0.4)
    assert quantile([(0.1, 1.0), (float("inf"), 3.0)], 0.9) == 0.1  # past the last finite bound
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_the_card_puts_the_manifest_in_human_form():
    manifest = read_manifest(REPO / "models" / "mnist-cnn" / "1")
    rows = {title: dict(rows) for title, rows in ((s.title, s.rows) for s in sections(manifest))}
    assert rows["Model"]["Parameters"] == "17,758" and rows["Model"]["SHA-256"] == manifest.sha256
    assert rows["Test results"]["Test accuracy"] == "99.49 %"
    assert rows["Training"]["Training time"] == "2 min 2 s" and rows["Training settings"]["lr"] == "0.2"
    assert rows["Other"]["Macs per example"] == "1079184"
    assert [duration(s) for s in (4.25, 121.9, 3900)] == ["4.2 s", "2 min 2 s", "1 h 05 min"]


def test_docs_page_renders_code_and_links_to_the_page(ui_client):
    html = ui_client.get("/docs").get_data(as_text=True)
    assert "`" not in html
    assert "<code>{&#34;instances&#34;" in html or "<code>{&quot;instances&quot;" in html
    assert 'href="/"' in html and "include_input" in html


def test_openapi_documents_include_input_on_classify(ui_client):
    spec = ui_client.get("/openapi.json").json
    params = spec["paths"]["/v1/models/{name}:classify"]["post"]["parameters"]
    assert {"top_k", "include_input"} <= {p["name"] for p in params}
    assert "input" in spec["components"]["schemas"]["Prediction"]["properties"]


def test_model_page_shows_the_rollout_and_each_versions_figures_side_by_side(make_app, artifact_root,
                                                                             tmp_path, mnist):
    root = tmp_path / "models"
    shutil.copytree(artifact_root / "mnist-tiny", root / "mnist-tiny")
    routing_store.change(root, "mnist-tiny",
                         lambda s: routing_state.start_shadow(routing_state.set_default(s, "1"), "2", 25,
                                                              "1"),
                         "shadow", by="an operator")
    client = make_app(model_dir=root).test_client()
    body = {"instances": [mnist["test_x"][0].tolist()], "dtype": "uint8"}
    for _ in range(3):
        assert client.post("/v1/models/mnist-tiny:predict", json=body).json["version"] == "1"
    html = client.get("/ui/models/mnist-tiny").get_data(as_text=True)
    assert 'data-routing="/v1/models/mnist-tiny/routing"' in html
    assert "gets version 1 (the default set by an operator)" in html
    assert "Shadow: version 2 gets a copy of 25 % of the default&#39;s requests" in html
    rows = re.findall(r'<tr><th scope="row">(\d+)</th><td>(\w*)</td><td>(\d+)</td>', html)
    assert [(v, role) for v, role, _ in rows] == [("2", "shadow"), ("1", "default")]
    assert int(dict((v, n) for v, _, n in rows)["1"]) >= 3
    assert re.search(r"<li>\S+ shadow by an operator → default 1, shadow 2 at 25 %</li>", html)
