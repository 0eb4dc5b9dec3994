"""The head view in a real browser: a page built from synthetic weights, loaded from file:// into
headless Chromium through selenium, and driven as a user would (select, hover, click).

Needs selenium (the `test` extra) and Debian's chromium + chromium-driver (.ci/run installs them
where it can); without them every test here is skipped with what is missing."""
from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest

from heads.html_view import head_view_html, named_heads
from heads.plots import cell_text

pytestmark = pytest.mark.browser

N_LAYER, N_HEAD = 2, 3
ENGLISH = ("the old king and the young queen walk to the castle at night while the cold rain falls on the grey sea and "
           "the wind blows over the hills where the tired men sit and talk of war").split()
CHINESE = list("中文注意力机制很有意思。")
PROBES = [("english", ["␣" + w for w in ENGLISH]), ("中文", CHINESE)]


def causal_weights(T: int, seed: int, n_layer: int = N_LAYER, n_head: int = N_HEAD) -> np.ndarray:
    """(n_layer, n_head, T, T) softmax rows over the past, different for every layer and head."""
    logits = np.random.default_rng(seed).normal(scale=3.0, size=(n_layer, n_head, T, T))
    logits[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


WEIGHTS = [causal_weights(len(labels), seed) for seed, (_, labels) in enumerate(PROBES)]
METRICS = {m: {g: np.random.default_rng(i).random((N_LAYER, N_HEAD)) for g in ("en", "zh")}
           for i, m in enumerate(("entropy", "prev_token"))}
BASELINES = {"entropy": {"en": 1.0, "zh": 1.0}, "prev_token": {"en": 0.12, "zh": 0.3}}


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def real_size_url(tmp_path_factory) -> str:
    """A run's size: 6 layers of 6 heads, 32-token probes, Chinese labels of three tokens' character."""
    labels = ["中共中央(1/3)", "中共中央(2/3)", "中共中央(3/3)", *CHINESE, *("␣" + w for w in ENGLISH[:17])]
    values = {"prev_token": {"en": np.full((6, 6), 0.1), "zh": np.full((6, 6), 0.1)}}
    path = tmp_path_factory.mktemp("real_size") / "head_view.html"
    path.write_text(head_view_html([("mixed", labels, causal_weights(32, 5, 6, 6))], "run · step 9", values,
                                   {"prev_token": {"en": 0.00540, "zh": 0.00540}}, "Measured on 8 validation windows"),
                    encoding="utf-8")
    return path.as_uri()


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> str:
    probes = [(name, labels, w) for (name, labels), w in zip(PROBES, WEIGHTS)]
    path = tmp_path_factory.mktemp("head_view") / "head_view.html"
    path.write_text(head_view_html(probes, "gpt-attention · test · step 7", METRICS, BASELINES), encoding="utf-8")
    return path.as_uri()


def open_page(driver, url: str, width: int = 1000):
    driver.set_window_size(width, 900)
    driver.get(url)
    from selenium.webdriver.support.ui import WebDriverWait

    # the page fills in once its font has loaded: wait for its menus
    WebDriverWait(driver, 5).until(lambda d: d.execute_script("return document.getElementById('probe').length"))
    driver.get_log("browser")  # start each test with an empty log
    return driver


@pytest.fixture
def page(driver, page_url):
    yield open_page(driver, page_url)
    assert severe_log(driver) == []


def severe_log(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, select_id)).select_by_value(value)


def token(driver, j: int, row: int = 0):
    return driver.execute_script("return document.querySelectorAll('#tokens .row')[arguments[0]]"
                                 ".querySelectorAll('.tok')[arguments[1]]", row, j)


def hover(driver, element, click: bool = False) -> None:
    from selenium.webdriver import ActionChains

    chain = ActionChains(driver).move_to_element(element)
    (chain.click() if click else chain).perform()


def shown(driver) -> list[str]:
    """Every token's background and tooltip: what the token view shows."""
    return driver.execute_script("return [...document.querySelectorAll('#tokens .tok')]"
                                 ".map((t) => t.style.background + '|' + t.title)")


def queries(driver, cls: str = "query") -> list[list[int]]:
    """Per row, the positions of the tokens marked `cls` (the query, or the pinned token)."""
    return driver.execute_script("return [...document.querySelectorAll('#tokens .row')].map((r) => "
                                 "[...r.querySelectorAll('.tok.' + arguments[0])].map((t) => +t.dataset.j))", cls)


def test_page_loads_without_errors_or_network_and_titles_itself_with_the_probe(driver, page_url):
    open_page(driver, page_url)
    assert severe_log(driver) == []
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert driver.title == "gpt-attention · test · step 7 · english"
    choose(driver, "probe", "1")
    assert driver.title == "gpt-attention · test · step 7 · 中文"
    assert len(driver.execute_script("return document.querySelectorAll('#tokens .tok')")) == N_HEAD * len(CHINESE)


def test_switching_layer_and_head_changes_what_is_shown(page):
    choose(page, "head", "0")
    first = shown(page)
    choose(page, "layer", "1")
    second = shown(page)
    choose(page, "head", "2")
    assert first != second != shown(page)
    assert by_id(page, "detail-title").text == "L1 H2 · english"


def test_hovering_a_token_shows_where_it_attends(page):
    choose(page, "head", "1")
    hover(page, token(page, 5))
    at_5 = shown(page)
    assert queries(page) == [[5]] and by_id(page, "status").text.startswith("query 5 '␣young'")
    hover(page, token(page, 20))
    assert queries(page) == [[20]] and shown(page) != at_5


def test_a_click_pins_the_token_while_nothing_is_pinned_and_a_second_click_unpins(page):
    choose(page, "head", "0")
    hover(page, token(page, 10), click=True)  # the hover repaints, the click still lands
    hover(page, token(page, 30))
    hover(page, by_id(page, "grid"))
    assert queries(page) == [[10]] and queries(page, "pinned") == [[10]]
    choose(page, "head", "2")  # the pin stays while another head is shown
    assert queries(page, "pinned") == [[10]]
    hover(page, token(page, 10), click=True)
    hover(page, token(page, 30))
    assert queries(page) == [[30]] and queries(page, "pinned") == [[]]


def test_pinning_works_with_all_heads_shown(page):
    assert by_id(page, "head").get_attribute("value") == "all"
    hover(page, token(page, 12, row=2), click=True)
    hover(page, token(page, 3, row=0))
    assert queries(page) == [[12]] * N_HEAD and queries(page, "pinned") == [[12]] * N_HEAD


def test_overview_has_a_thumbnail_per_head_and_one_opens_a_labelled_heatmap_with_metrics(page):
    thumbs = page.execute_script("return document.querySelectorAll('#grid canvas')")
    labels = page.execute_script("return [...document.querySelectorAll('#grid .label')].map((e) => e.textContent)")
    assert len(thumbs) == N_LAYER * N_HEAD and labels == ["H0", "H1", "H2", "L0", "L1"]
    assert not by_id(page, "detail").is_displayed()
    thumbs[1 * N_HEAD + 2].click()
    assert by_id(page, "detail").is_displayed() and by_id(page, "legend").is_displayed()
    assert (by_id(page, "layer").get_attribute("value"), by_id(page, "head").get_attribute("value")) == ("1", "2")
    texts = page.execute_script("return ['queries', 'keys'].map((id) => [...document.getElementById(id).children]"
                                ".map((d) => d.textContent))")
    assert texts == [["␣" + w for w in ENGLISH]] * 2
    rows = page.execute_script("return [...document.querySelectorAll('#metrics tr')].map((r) => "
                               "[...r.children].map((c) => c.textContent))")
    assert rows[0] == ["metric", "en", "zh"] and [r[0] for r in rows[1:]] == ["entropy", "prev_token"]
    assert rows[2][2] == f"{cell_text(METRICS['prev_token']['zh'][1, 2])} (chance 0.300)"
    canvas, cell = by_id(page, "map"), int(by_id(page, "map").get_attribute("data-cell"))
    from selenium.webdriver import ActionChains

    i, j = 9, 4  # offsets are from the centre of the canvas's visible part: all of it, once scrolled into view
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(page).move_to_element_with_offset(canvas, (j + 0.5) * cell - canvas.size["width"] / 2,
                                                   (i + 0.5) * cell - canvas.size["height"] / 2).perform()
    readout = re.fullmatch(r"query '(.+)' -> key '(.+)': ([0-9.]+)", by_id(page, "readout").text)
    assert readout and readout[1] == "␣" + ENGLISH[i] and readout[2] == "␣" + ENGLISH[j]
    assert abs(float(readout[3]) - WEIGHTS[0][1, 2, i, j]) <= 1 / 255 + 1e-3


def test_at_600_px_token_rows_wrap_and_nothing_overflows_sideways(driver, page_url):
    page = open_page(driver, page_url, width=600)
    overflow = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    assert page.execute_script("return window.innerWidth") <= 600
    tops = page.execute_script("return new Set([...document.querySelector('#tokens .row').children]"
                               ".map((t) => t.offsetTop)).size")
    assert tops > 1
    width, room = page.execute_script(overflow)
    assert width <= room
    page.execute_script("document.querySelectorAll('#grid canvas')[4].click()")  # open a head: heatmap + table
    width, room = page.execute_script(overflow)
    assert by_id(page, "detail").is_displayed() and width <= room
    assert severe_log(page) == []


def test_chinese_is_drawn_with_the_embedded_font(page):
    from PIL import Image

    choose(page, "probe", "1")
    loaded = page.execute_async_script("const done = arguments[0]; document.fonts.load("
                                       "'16px \"Head view CJK\"', '中文').then((f) => done(f.length))")
    assert loaded == 1
    page.execute_cdp_cmd("DOM.enable", {})
    page.execute_cdp_cmd("CSS.enable", {})
    root = page.execute_cdp_cmd("DOM.getDocument", {})["root"]["nodeId"]
    for selector in ("#tokens .tok", "#probe"):  # a token, and the probe's name in its menu
        node = page.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        fonts = page.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        assert [(f["familyName"], f["isCustomFont"]) for f in fonts] == [("Noto Sans CJK SC", True)], selector
    # a missing glyph is the same box for every character; drawn glyphs differ from each other
    page.execute_script("for (const ch of ['中', '文']) document.body.insertAdjacentHTML('afterbegin',"
                        "`<span class=\"glyph\" style=\"font-size:48px;background:#fff\">${ch}</span>`)")
    pictures = [np.asarray(Image.open(io.BytesIO(glyph.screenshot_as_png)).convert("L"))
                for glyph in page.execute_script("return document.querySelectorAll('.glyph')")]
    assert all((p < 128).sum() > 50 for p in pictures)
    assert pictures[0].shape == pictures[1].shape and np.abs(pictures[0].astype(int) - pictures[1]).sum() > 0


def test_the_first_chinese_text_shown_is_drawn_with_glyphs_not_boxes(driver, tmp_path):
    """Chromium draws text laid out before the embedded font has loaded as boxes, and never redraws it:
    here the status line, the first Chinese on the page once a probe with an ASCII name is chosen."""
    from PIL import Image

    probes = [("english", PROBES[0][1], WEIGHTS[0]), ("zh", CHINESE, WEIGHTS[1])]
    path = tmp_path / "head_view.html"
    path.write_text(head_view_html(probes, "run · step 7"), encoding="utf-8")
    page = open_page(driver, path.as_uri(), width=700)
    choose(page, "probe", "1")
    page.execute_async_script("document.fonts.ready.then(arguments[0])")

    def pictures() -> list[np.ndarray]:  # the status line and the first token, as drawn
        return [np.asarray(Image.open(io.BytesIO(e.screenshot_as_png)).convert("L")).astype(int)
                for e in (by_id(page, "status"), token(page, 0))]

    shown = pictures()
    page.execute_script("for (const e of [document.getElementById('status'), document.querySelector('#tokens .tok')])"
                        " e.textContent = e.textContent")  # laid out again, now with the font loaded
    assert by_id(page, "status").text == "query 11 '。'" and token(page, 0).text == "中"
    changed = [int((now != before).sum()) if now.shape == before.shape else f"{before.shape} -> {now.shape}"
               for now, before in zip(pictures(), shown)]
    assert changed == [0, 0]  # pixels that differ: none, the glyphs were there from the start


def test_the_overview_marks_each_named_head_with_its_metric_group_and_value(page):
    named = named_heads(METRICS, BASELINES)
    assert named  # the page's random metrics clear chance by the margin somewhere
    marks = page.execute_script("return [...document.querySelectorAll('#grid .thumb')].map((t) => "
                                "[...t.querySelectorAll('.named')].map((n) => n.textContent))")
    expected = [[] for _ in range(N_LAYER * N_HEAD)]
    for n in named:
        expected[n["layer"] * N_HEAD + n["head"]].append(f"{n['metric']} {n['group']} {cell_text(n['value'])}")
    assert marks == expected


def grid_box(page) -> dict:
    return page.execute_script("const r = document.getElementById('grid').getBoundingClientRect();"
                               "return {top: r.top, width: r.width, height: innerHeight, room: innerWidth}")


def test_at_1400_px_the_overview_sits_beside_all_heads_and_uses_the_width(driver, real_size_url):
    box = grid_box(open_page(driver, real_size_url, width=1400))
    assert box["top"] < box["height"] / 2 and box["width"] > 0.4 * box["room"]


def test_at_700_px_the_overview_starts_on_the_first_screen_below_all_heads(driver, real_size_url):
    page = open_page(driver, real_size_url, width=700)
    box = grid_box(page)
    assert box["top"] + box["width"] / 7 < box["height"]  # the first layer's thumbnails begin in view
    assert page.execute_script("return document.querySelectorAll('#tokens .row').length") == 6


def test_at_700_px_heatmap_labels_are_whole_and_metric_cells_one_line_beside_what_they_measure(driver, real_size_url):
    page = open_page(driver, real_size_url, width=700)
    page.execute_script("document.querySelectorAll('#grid canvas')[7].click()")
    cut = page.execute_script("return [...document.querySelectorAll('#keys div, #queries div')].filter((d) => "
                              "d.scrollHeight > d.clientHeight || d.scrollWidth > d.clientWidth).map((d) => d.title)")
    assert cut == []
    lines = page.execute_script("return [...document.querySelectorAll('#metrics td')].map((td) => {"
                                "const r = document.createRange(); r.selectNodeContents(td);"
                                "return [td.textContent, new Set([...r.getClientRects()].map((b) => b.top)).size]; })")
    assert lines == [["0.100 (chance 0.005)", 1]] * 2
    assert by_id(page, "metrics").find_element("tag name", "caption").text == "Measured on 8 validation windows"
