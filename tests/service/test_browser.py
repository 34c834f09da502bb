"""The web pages in a real browser: Debian's Chromium driven by Playwright, over the whole service
(``python -m service``) on 127.0.0.1. Draws digits with mouse moves, uploads and drops files, switches
models, reads the model page, and takes screenshots at desktop and phone width. Every request the browser
makes must go to the service: anything else is blocked and fails the test."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from service.contract import images
from service.contract.manifest import read_manifest
from service.web import imaging

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 20_000  # every wait in the browser is bounded by this
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
# A seven and a one as strokes, in fractions of the pad: (x, y) points of one stroke each.
SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]
ONE = [(0.5, 0.15), (0.5, 0.85)]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the e2e extra)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium from Debian's package (never a browser Playwright downloads)."""
    if not CHROMIUM.exists():
        pytest.skip("needs Chromium: apt-get install chromium (never `playwright install`)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-gpu"], timeout=WAIT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """One browser page on the site, with every request it made and every script error it saw."""

    def __init__(self, browser: object, site: object, viewport: dict[str, int]) -> None:
        self.site = site
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(WAIT_MS)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.context.route("**/*", self._only_the_site)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))

    def _only_the_site(self, route: object) -> None:
        url = route.request.url
        self.requests.append(url)
        if url.startswith(self.site.url + "/"):
            route.continue_()
        else:
            route.abort()

    def open(self, path: str) -> object:
        """Load ``path`` and, on the digit page, wait until the model list has arrived."""
        self.page.goto(self.site.url + path)
        if path in ("/", "/ui/") or path.startswith("/?"):
            self.page.wait_for_selector("#result[data-models]")
        return self.page

    def answered(self) -> int:
        return int(self.page.get_attribute("#result", "data-answered"))

    def wait_answered(self, before: int) -> str:
        """Wait for the answer after ``before`` answers; return the page's state: done or error."""
        self.page.wait_for_function("n => Number(document.querySelector('#result').dataset.answered) > n",
                                    arg=before, timeout=WAIT_MS)
        return self.page.get_attribute("#result", "data-state")

    def wait_answer(self, before: int) -> str:
        """Wait for a good answer after ``before`` answers; return the predicted class shown."""
        assert self.wait_answered(before) == "done", self.page.inner_text("#error")
        return self.page.get_by_test_id("prediction").inner_text()

    def draw(self, stroke: list[tuple[float, float]]) -> dict:
        """Draw one stroke with mouse moves; return the :classify answer the page got for it."""
        box = self.page.get_by_test_id("pad").bounding_box()
        at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        with self.page.expect_response(lambda r: ":classify" in r.url, timeout=WAIT_MS) as answer:
            self.page.mouse.move(*at[0])
            self.page.mouse.down()
            for x, y in at[1:]:
                self.page.mouse.move(x, y, steps=12)
            self.page.mouse.up()
        return answer.value

    def preview(self) -> np.ndarray:
        """The preview canvas's pixels (grey), as the page drew them."""
        data = self.page.evaluate("""() => { const c = document.querySelector('[data-testid=preview]');
            return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
        return np.asarray(data, np.uint8).reshape(28, 28, 4)[..., 0]

    def close(self) -> None:
        self.context.close()
        strays = [u for u in self.requests if not u.startswith(self.site.url + "/")]
        assert not strays, f"requests that left {self.site.url}: {strays}"
        assert not self.problems, self.problems


@pytest.fixture
def tab(browser: object, site: object) -> Iterator[Tab]:
    """A fresh browser context on the site at desktop size; checked for stray requests and errors after."""
    opened = Tab(browser, site, DESKTOP)
    yield opened
    opened.close()


def image_file(digit: np.ndarray, kind: str) -> bytes:
    """A real MNIST test digit as a scan would give it: dark on white, larger, off-centre, PNG or JPEG."""
    paper = np.full((160, 200), 250, np.uint8)
    paper[10:122, 70:182] = np.asarray(Image.fromarray(255 - digit).resize((112, 112)))
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


def test_drawing_a_digit_shows_its_class_the_input_and_every_probability(tab, ui_root):
    tab.open("/")
    spec = read_manifest(ui_root / "mnist-cnn" / "1").input
    for stroke, digit in ((SEVEN, "7"), (ONE, "1")):
        tab.page.get_by_role("button", name="Clear").click()
        before = tab.answered()
        response = tab.draw(stroke)
        assert tab.wait_answer(before) == digit
        body = response.json()["predictions"][0]
        # What the page sent, preprocessed here, is what the service says the model got, and what it shows.
        sent = response.request.post_data_buffer
        assert np.array_equal(images.to_input(imaging.decode(sent), spec)[0], np.asarray(body["input"][0]))
        assert np.array_equal(tab.preview(), np.asarray(body["input"][0], np.uint8))
        bars = tab.page.get_by_test_id("probabilities").locator("li")
        assert bars.count() == 10
        shown = {row.get_attribute("data-label"): float(row.get_attribute("data-probability"))
                 for row in bars.all()}
        assert shown == pytest.approx(body["probabilities"])
        assert "ms round trip" in tab.page.inner_text("#latency")
    assert ":classify?include_input=true" in " ".join(tab.requests)


def test_the_answer_shows_which_pixels_mattered_over_the_input(tab):
    tab.open("/")
    before = tab.answered()
    with tab.page.expect_response(lambda r: ":explain" in r.url, timeout=WAIT_MS) as explained:
        tab.draw(SEVEN)
    label = tab.wait_answer(before)
    tab.page.wait_for_selector('#attribution-figure[data-state="done"]')
    explanation = explained.value.json()["explanations"][0]
    assert explanation["label"] == label == tab.page.get_attribute("#attribution-figure", "data-label")
    overlay = tab.page.evaluate("""() => { const c = document.querySelector('[data-testid=attribution]');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    rgb = np.asarray(overlay, np.int32).reshape(28, 28, 4)[..., :3]
    red = (rgb[..., 0] - rgb[..., 2]) > 60  # pixels drawn as pushing towards the answer
    strokes = tab.preview() > 64
    near = np.logical_or.reduce([np.roll(strokes, (dy, dx), (0, 1)) for dy in (-2, -1, 0, 1, 2)
                                 for dx in (-2, -1, 0, 1, 2)])
    assert red.sum() >= 5 and near[red].mean() >= 0.7, (red.sum(), near[red].mean())


def test_a_two_stroke_digit_is_classified_once_the_drawing_pauses(tab):
    tab.open("/")
    box = tab.page.get_by_test_id("pad").bounding_box()
    before = tab.answered()
    for stroke in (((0.3, 0.15), (0.3, 0.55), (0.75, 0.55)), ((0.65, 0.15), (0.65, 0.9))):  # a 4
        points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        tab.page.mouse.move(*points[0])
        tab.page.mouse.down()
        for x, y in points[1:]:
            tab.page.mouse.move(x, y, steps=6)
        tab.page.mouse.up()
    tab.wait_answer(before)
    assert sum(":classify" in url for url in tab.requests) == 1, tab.requests


def test_a_digit_drawn_from_the_keyboard_is_classified(tab):
    page = tab.open("/")
    page.focus("#pad")
    assert page.is_visible("#pen")
    before = tab.answered()
    for _ in range(3):
        page.keyboard.press("ArrowUp")  # from the middle, up, lower the pen, draw down: a 1
    page.keyboard.press("Space")
    for _ in range(6):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    with page.expect_response(lambda r: ":classify" in r.url, timeout=WAIT_MS):
        page.keyboard.press("Enter")
    assert tab.wait_answer(before) == "1"
    page.keyboard.press("Escape")
    assert tab.page.get_by_test_id("prediction").inner_text() == "—" and tab.preview().max() == 0


def test_a_digit_drawn_with_a_finger_is_classified(browser, site):
    touch = Tab(browser, site, {**PHONE})
    try:
        page = touch.open("/")
        box = page.get_by_test_id("pad").bounding_box()
        cdp = touch.context.new_cdp_session(page)  # real touch events, as a phone's screen sends them

        def finger(kind: str, fy: float) -> None:
            points = [] if kind == "touchEnd" else [{"x": box["x"] + 0.5 * box["width"],
                                                     "y": box["y"] + fy * box["height"]}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

        before = touch.answered()
        with page.expect_response(lambda r: ":classify" in r.url, timeout=WAIT_MS):
            finger("touchStart", 0.15)
            for step in range(1, 15):
                finger("touchMove", 0.15 + step * 0.05)
            finger("touchEnd", 0.85)
        assert touch.wait_answer(before) == "1"
    finally:
        touch.close()


def test_recent_answers_stay_in_view_newest_first_after_clear(tab):
    tab.open("/")
    said = []
    for stroke in (SEVEN, ONE):
        before = tab.answered()
        tab.draw(stroke)
        said.append(tab.wait_answer(before))
        tab.page.get_by_role("button", name="Clear").click()
    items = tab.page.get_by_test_id("history").locator("li")
    assert items.count() == 2
    assert [items.nth(i).locator(".history-answer").inner_text() for i in range(2)] == said[::-1]
    assert all(items.nth(i).locator("img").evaluate("i => i.complete && i.naturalWidth === 28")
               for i in range(2))


def test_clear_resets_the_answer_the_overlay_and_the_pad(tab):
    tab.open("/")
    before = tab.answered()
    tab.draw(SEVEN)
    tab.wait_answer(before)
    tab.page.wait_for_selector('#attribution-figure:not([data-state="busy"])')
    tab.page.get_by_role("button", name="Clear").click()
    assert tab.page.get_by_test_id("prediction").inner_text() == "—"
    assert tab.page.get_by_test_id("probabilities").locator("li").count() == 0
    assert tab.page.get_attribute("#result", "data-state") == "idle"
    assert tab.page.get_attribute("#attribution-figure", "data-state") == "idle"
    assert tab.preview().max() == 0


def test_a_wrong_answer_is_corrected_into_the_feedback_folder_and_metrics(tab, site):
    tab.open("/")
    before = tab.answered()
    tab.draw(SEVEN)
    said = tab.wait_answer(before)
    truth = "1" if said != "1" else "2"
    tab.page.get_by_label("That is wrong: it is a").select_option(truth)
    with tab.page.expect_response(lambda r: r.url.endswith("/feedback"), timeout=WAIT_MS) as sent:
        tab.page.get_by_role("button", name="Send correction").click()
    assert sent.value.status == 200, sent.value.json()
    tab.page.wait_for_selector('#correct[data-state="done"]')
    assert "stored as" in tab.page.get_by_test_id("correct-note").inner_text()
    stored = list((site.feedback_dir / "mnist-cnn" / truth).glob("*.png"))
    assert len(stored) == 1
    assert np.array_equal(np.asarray(Image.open(stored[0])), tab.preview())
    metrics = requests.get(f"{site.url}/metrics", timeout=10).text
    assert any(line.startswith("trainserve_corrections_total{") and f'label="{truth}"' in line
               for line in metrics.splitlines())
    # The version's page shows it in its corrections matrix: the true label's row, the answer's column.
    answer = sent.value.json()
    page = tab.open(f"/ui/models/mnist-cnn/{answer['version']}")
    page.wait_for_selector('#corrections-status[data-total="1"]', timeout=WAIT_MS)
    rows = page.locator("#corrections-matrix tbody tr")
    assert rows.count() == 1 and rows.locator("th").inner_text() == truth
    assert rows.locator("td").nth(int(answer["stored"][0]["predicted"])).inner_text() == "1"
    assert rows.locator("td[data-count]").count() == 1


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_uploading_an_image_classifies_it(tab, mnist, tmp_path, kind):
    tab.open("/")
    index = {"PNG": 0, "JPEG": 1}[kind]
    path = tmp_path / f"digit.{kind.lower()}"
    path.write_bytes(image_file(mnist["test_x"][index], kind))
    before = tab.answered()
    tab.page.get_by_label("Upload an image").set_input_files(str(path))
    assert tab.wait_answer(before) == str(mnist["test_y"][index])
    assert tab.preview().max() == 255  # the digit, stretched to full contrast as the model got it


def test_an_image_of_no_digit_is_said_not_to_look_like_one(tab, tmp_path):
    tab.open("/")
    path = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(path)  # a blank page: the shipped model's "not a digit" flags it
    before = tab.answered()
    tab.page.get_by_label("Upload an image").set_input_files(str(path))
    assert tab.wait_answer(before) == "this does not look like a digit"
    assert "unlike anything it knows" in tab.page.inner_text("#confidence")


def test_a_file_that_is_no_image_gets_the_services_reason_and_the_page_goes_on(tab, mnist, tmp_path):
    tab.open("/")
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    before = tab.answered()
    tab.page.get_by_label("Upload an image").set_input_files(str(text))
    assert tab.wait_answered(before) == "error"
    assert "cannot decode the image" in tab.page.get_by_role("alert").inner_text()
    tab.problems = [p for p in tab.problems if "status of 400" not in p]  # the browser logs the 400 itself
    good = tmp_path / "digit.png"
    good.write_bytes(image_file(mnist["test_x"][0], "PNG"))
    before = tab.answered()
    tab.page.get_by_label("Upload an image").set_input_files(str(good))
    assert tab.wait_answer(before) == str(mnist["test_y"][0])
    assert tab.page.get_by_role("alert").is_hidden()


def test_dropping_an_image_on_the_pad_classifies_it(tab, mnist):
    tab.open("/")
    png = list(image_file(mnist["test_x"][2], "PNG"))
    before = tab.answered()
    tab.page.evaluate("""(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "digit.png", {type: "image/png"}));
        const drop = new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true});
        document.querySelector('#drop').dispatchEvent(drop);
    }""", png)
    assert tab.wait_answer(before) == str(mnist["test_y"][2])


def test_the_selector_lists_every_model_and_switching_asks_the_chosen_one(tab, site):
    listed = requests.get(f"{site.url}/v1/models", timeout=10).json()["models"]
    tab.open("/")
    select = tab.page.get_by_label("Model", exact=True)
    values = select.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert values == [f"{m['name']}/{m['version']}" for m in listed]
    assert select.input_value() == "mnist-cnn/3"  # the first name's newest version
    before = tab.answered()
    tab.draw(SEVEN)
    tab.wait_answer(before)
    before = tab.answered()
    with tab.page.expect_request(lambda r: "/v1/models/mnist-tiny/versions/1:classify" in r.url):
        select.select_option("mnist-tiny/1")  # the drawing is sent again, to the chosen model
    tab.wait_answer(before)
    assert "mnist-tiny v1" in tab.page.inner_text("#latency")
    assert tab.page.get_attribute("#card-link", "href") == "/ui/models/mnist-tiny/1"


def test_controls_are_labelled_and_reachable_from_the_keyboard(tab):
    page = tab.open("/")
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.id || document.activeElement.tagName"))
    assert {"model", "clear", "upload"} <= set(focused), focused
    page.get_by_label("Model", exact=True).focus()
    page.keyboard.press("ArrowDown")
    assert page.get_by_label("Model", exact=True).input_value() != "mnist-cnn/3"
    assert page.get_by_role("img", name="Drawing pad").count() == 1


def test_axe_finds_no_accessibility_violations_on_any_page(tab):
    axe = pytest.importorskip("axe_playwright_python.sync_playwright",
                              reason="pip install axe-playwright-python (the e2e extra)")
    tab.open("/")
    before = tab.answered()
    tab.draw(SEVEN)
    tab.wait_answer(before)  # with the answer, its chart and preview on the page
    pages = {"/": axe.Axe().run(tab.page)}
    tab.open("/ui/models/mnist-cnn/1").wait_for_selector('#live[data-refreshes="1"]')
    pages["/ui/models/mnist-cnn/1"] = axe.Axe().run(tab.page)
    tab.open("/docs")
    pages["/docs"] = axe.Axe().run(tab.page)
    found = {path: [(v["id"], v["nodes"][0]["failureSummary"]) for v in result.response["violations"]]
             for path, result in pages.items()}
    assert found == {path: [] for path in pages}, found


def test_the_model_page_shows_its_plots_and_live_figures(tab, site, mnist):
    page = tab.open("/ui/models/mnist-cnn/1")
    page.wait_for_selector('#live[data-refreshes="1"]')
    first = int(page.inner_text('[data-stat="requests"]'))
    images = page.locator(".plots img")
    assert images.count() == 3
    assert all(img.evaluate("i => i.complete && i.naturalWidth > 100") for img in images.all())
    for digit in mnist["test_x"][:2]:
        requests.post(f"{site.url}/v1/models/mnist-cnn:classify", data=image_file(digit, "PNG"),
                      headers={"Content-Type": "image/png"}, timeout=10)
    page.wait_for_function("n => Number(document.querySelector('[data-stat=requests]').textContent) >= n",
                           arg=first + 2, timeout=WAIT_MS)
    assert page.inner_text('[data-stat="p50"]').endswith(" ms")
    assert "17,758" in page.inner_text("main")


def _not_blank(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, path


def test_screenshots_at_desktop_and_phone_width_are_not_blank_and_fit(tab, tmp_path):
    keep = os.environ.get("TRAINSERVE_SCREENSHOTS")  # a folder: to look at them, or refresh the README's
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        tab.page.set_viewport_size(viewport)
        tab.open("/")
        before = tab.answered()
        tab.draw(SEVEN)
        tab.wait_answer(before)
        shots = [_shot(tab, tmp_path / f"ui-{width}.png")]
        tab.open("/ui/models/mnist-cnn/1").wait_for_selector('#live[data-refreshes="1"]')
        shots.append(_shot(tab, tmp_path / f"model-{width}.png"))
        for shot in shots:
            _not_blank(shot)
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / shot.name)


def _shot(tab: Tab, path: Path) -> Path:
    # Nothing wider than the screen: no sideways scrolling, at phone width either.
    assert tab.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), path.name
    tab.page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def table_site(service_class: type, task_root: dict,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole service over the task models (a table model among them), storing corrections."""
    feedback = tmp_path_factory.mktemp("table-feedback")
    service = service_class({"TRAINSERVE_MODEL_DIR": str(task_root["root"]), "TRAINSERVE_WORKERS": "1",
                             "TRAINSERVE_FEEDBACK_DIR": str(feedback), "TRAINSERVE_GRPC_BIND": "off"},
                            tmp_path_factory.mktemp("table-site"), "granian")
    service.feedback_dir, service.model_dir = feedback, task_root["root"]
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def test_a_table_model_page_explains_a_row_per_feature_and_takes_a_correction(browser, table_site):
    tab = Tab(browser, table_site, DESKTOP)
    try:
        page = tab.open("/ui/models/spiral/1")
        page.fill("[data-feature=x]", "0.8")
        page.fill("[data-feature=y]", "-0.3")
        with page.expect_response(lambda r: r.url.endswith(":explain"), timeout=WAIT_MS) as sent:
            page.get_by_role("button", name="Explain").click()
        answer = sent.value.json()
        page.wait_for_selector('#try[data-state="done"]')
        assert page.inner_text("[data-testid=try-prediction]") == answer["predictions"][0]["label"]
        bars = page.locator("[data-testid=try-bars] li")
        assert [bars.nth(i).get_attribute("data-feature") for i in range(bars.count())] == ["x", "y"]
        shown = {bar.get_attribute("data-feature"): float(bar.get_attribute("data-attribution"))
                 for bar in bars.all()}
        said = answer["predictions"][0]["label"]
        assert shown == pytest.approx(answer["explanations"][0]["attributions"][said])
        labels = read_manifest(Path(table_site.model_dir) / "spiral" / "1").labels
        truth = next(label for label in labels if label != answer["predictions"][0]["label"])
        page.select_option("#try-correct-label", truth)
        page.get_by_role("button", name="Send correction").click()
        page.wait_for_selector('#try-correct[data-state="done"]')
        rows = (table_site.feedback_dir / "spiral" / "corrections.csv").read_text().splitlines()
        assert rows[0] == "x,y,label,hash" and rows[1].startswith(f"0.8,-0.3,{truth},")
    finally:
        tab.close()
