"""The page's flows that broke in a real browser (issue #30), each driven in Debian's Chromium with the server-rendered
viewer (``?viewer=server``, what a browser without WebGL2 shows): the slice slider
stays where the user lets go and the wheel and keys scroll; a new upload replaces the old one and the series
table reads cleanly; Draft report waits for a running expert; an expert run shows one progress bar that advances
and covers none of the images; an expert failure is shown, logged and audited.

The app runs with the scripted chat backend and the built-in experts plus two stand-ins (``flows_server``).
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from stand_in_experts import BROKEN_MESSAGE

pytestmark = pytest.mark.browser
TIMEOUT_MS = 30_000


def _open(page, url: str, example: str = "Example CT") -> None:
    page.goto(f"{url}/?viewer=server")  # these flows are the server-rendered viewer's (test_viewer.py: the browser one)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    page.get_by_role("button", name=example, exact=True).click()
    page.locator("#m3-study-status").filter(has_text="Loaded").wait_for(timeout=TIMEOUT_MS)


def _caption_slice(page) -> int:
    return int(re.search(r"axial (\d+)/", page.locator("#m3-caption").inner_text()).group(1))


def test_the_slider_stays_where_it_is_let_go_and_the_wheel_and_keys_scroll(new_page, flows_server, artifacts):
    server, _ = flows_server
    page = new_page()
    _open(page, server.url)
    slider = page.locator("#m3-slice input[type=range]")
    assert slider.input_value() == "33" and _caption_slice(page) == 33  # the middle of 64
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    for step in range(1, 31):  # a quick drag: every move is an input event, replies arrive late
        page.mouse.move(box["x"] + box["width"] * (0.5 + 0.3 * step / 30), y)
    page.mouse.up()
    let_go = int(slider.input_value())
    assert let_go >= 50
    page.locator("#m3-caption").filter(has_text=f"axial {let_go}/64").wait_for(timeout=TIMEOUT_MS)
    time.sleep(2.0)  # any late reply has arrived by now
    assert int(slider.input_value()) == let_go and _caption_slice(page) == let_go
    page.screenshot(path=str(artifacts / "flows_01_dragged.png"))

    page.locator("#m3-viewer img").hover()
    for _ in range(3):  # three notches down: three slices on
        page.mouse.wheel(0, 100)
    page.locator("#m3-caption").filter(has_text=f"axial {let_go + 3}/64").wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-viewer img").click()  # the focus leaves the slider: the page's keys take over
    page.keyboard.press("ArrowDown")
    page.keyboard.press("PageDown")  # a tenth of the slices back
    expected = let_go + 3 - 1 - 6
    page.locator("#m3-caption").filter(has_text=f"axial {expected}/64").wait_for(timeout=TIMEOUT_MS)
    time.sleep(1.0)
    assert int(slider.input_value()) == expected and _caption_slice(page) == expected
    page.locator("#m3-question textarea").fill("typing here does not scroll")
    page.locator("#m3-question textarea").press("ArrowUp")
    time.sleep(0.5)
    assert int(slider.input_value()) == expected


def test_a_new_upload_replaces_the_old_one_and_the_series_table_reads_cleanly(new_page, flows_server, phantom_zip,
                                                                            tmp_path, artifacts):
    import zipfile

    from data.phantoms import DICOM_DIRNAME, generate, write_study

    server, _ = flows_server
    study = write_study(generate("cxr", 11), tmp_path / "cxr")
    cxr_zip = tmp_path / "cxr.zip"
    with zipfile.ZipFile(cxr_zip, "w") as zf:
        for f in sorted((study / DICOM_DIRNAME).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(study))
    page = new_page()
    page.goto(server.url)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    status = page.locator("#m3-study-status")
    page.locator("#m3-upload input[type=file]").set_input_files(str(phantom_zip))
    status.filter(has_text="Loaded 1 series").wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-upload").filter(has_text="Drop File Here").wait_for(timeout=TIMEOUT_MS)  # emptied for the next one
    page.locator("#m3-upload input[type=file]").set_input_files(str(cxr_zip))
    page.locator("#m3-series-table").filter(has_text="DX").wait_for(timeout=TIMEOUT_MS)
    assert "Loaded 1 series" in status.inner_text() and "studies" not in status.inner_text()
    page.screenshot(path=str(artifacts / "flows_02_second_upload.png"))

    table = page.locator("#m3-series-table")
    headers = [h.strip() for h in table.locator("th").all_inner_texts()]
    assert headers == ["#", "Modality", "Description", "Voxels", "Spacing (mm)"]
    cells = table.locator("[role=gridcell]").all_inner_texts()
    assert cells[:2] == ["1", "DX"] and cells[3] == "256x256x1"
    # every header and every cell but the description sits on one line, inside its column
    layout = page.evaluate("""() => [...document.querySelectorAll(
        '#m3-series-table th span.header, #m3-series-table [role=gridcell]:not([data-col="2"]) span')].map(span => {
          const cell = span.closest('th, [role=gridcell]').getBoundingClientRect();
          const text = span.getBoundingClientRect();
          return [span.textContent, span.getClientRects().length, text.right <= cell.right + 0.5];
        })""")
    assert layout and all(lines == 1 and inside for _, lines, inside in layout), layout


def test_draft_report_waits_for_the_expert_that_is_running(new_page, flows_server, artifacts):
    server, _ = flows_server
    page = new_page()
    _open(page, server.url)
    page.evaluate("""() => {  // every text the report's status line shows, in order
        window.m3ReportTexts = [];
        new MutationObserver(() => window.m3ReportTexts.push(document.querySelector('#m3-report-status').innerText))
          .observe(document.querySelector('#m3-report-status'), {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_role("button", name="Slow test expert").click()
    page.locator("#m3-expert-status").filter(has_text="Slow test expert").wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-draft").click()
    page.locator("#m3-report-status").filter(has_text="Waiting for Slow test expert to finish").wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "flows_03_draft_waiting.png"), full_page=True)
    findings = page.locator("#m3-findings textarea")
    page.wait_for_function("el => el.value.includes('dense tissue volume')", arg=findings.element_handle(), timeout=TIMEOUT_MS)
    texts = page.evaluate("() => window.m3ReportTexts")
    assert not any("no expert results" in t for t in texts), texts
    assert "Draft by scripted-test-backend from 1 expert result" in page.locator("#m3-report-status").inner_text()
    page.locator("#m3-expert-status").filter(has_text="Slow test expert finished in").wait_for(timeout=TIMEOUT_MS)


def test_an_expert_run_shows_one_progress_bar_that_advances_over_none_of_the_images(new_page, flows_server, artifacts):
    server, _ = flows_server
    page = new_page()
    _open(page, server.url)
    page.get_by_role("button", name="Slow test expert").click()
    readings = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(readings) < 8:
        bars = page.evaluate("""() => [...document.querySelectorAll('[role=progressbar]')]
            .filter(bar => bar.offsetParent !== null)
            .map(bar => [(bar.closest('[id^=m3-]') || {id: ''}).id, Number(bar.getAttribute('aria-valuenow'))])""")
        if bars:
            readings.append(bars)
        time.sleep(0.25)
    page.screenshot(path=str(artifacts / "flows_04_progress.png"))
    assert len(readings) >= 4 and all(len(bars) == 1 and bars[0][0] == "m3-expert-status" for bars in readings), readings
    values = [bars[0][1] for bars in readings]
    assert values == sorted(values) and values[-1] > values[0], values  # it advances
    for covered in ("m3-viewer", "m3-legend", "m3-chat", "m3-slice"):  # nothing pending over the images or the chat
        assert page.locator(f"#{covered} [data-testid=status-tracker]:not(.hide)").count() == 0, covered
    page.locator("#m3-expert-status").filter(has_text="Slow test expert finished in").wait_for(timeout=TIMEOUT_MS)
    assert "dense tissue" in page.locator("#m3-legend").inner_text()


def test_an_expert_failure_is_shown_logged_and_audited(new_page, flows_server, artifacts, caplog):
    server, cfg = flows_server
    page = new_page()
    _open(page, server.url)
    with caplog.at_level(logging.WARNING, logger="app.events"):
        page.get_by_role("button", name="Broken test expert").click()
        page.locator("#m3-expert-status").filter(has_text="Broken test expert failed").wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "flows_05_failure.png"))
    assert page.locator("#m3-expert-status").inner_text().strip() == f"Broken test expert failed: {BROKEN_MESSAGE}"
    legend = page.locator("#m3-legend").inner_text()
    assert "Broken test expert failed" in legend and BROKEN_MESSAGE in legend
    assert f"Broken test expert failed: {BROKEN_MESSAGE}" in page.locator("#m3-chat").inner_text()
    logged = [r.getMessage() for r in caplog.records if r.name == "app.events"]
    assert logged == [f"expert broken_ct failed: RuntimeError: {BROKEN_MESSAGE}"]
    runs = [json.loads(line) for line in cfg.audit.log_path.read_text().splitlines()]
    failed = [r for r in runs if r["event"] == "expert_run" and r["tool_calls"][0]["error"]]
    assert failed and failed[-1]["tool_calls"][0]["name"] == "broken_ct"
    assert failed[-1]["tool_calls"][0]["error"] == f"RuntimeError: {BROKEN_MESSAGE}"
