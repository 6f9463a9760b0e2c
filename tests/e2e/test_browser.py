"""The clinician's path in a real browser (Debian Chromium, headless): log in, upload a phantom DICOM
zip, scroll, ask a question that makes the model call the CT expert, see the overlay and the answer,
draft and export a report. Also: a wrong password gets no data, an API call without login is refused,
and the page makes no request outside localhost. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.browser
TIMEOUT_MS = 30_000


def _login(page, url, user, password):
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name=re.compile("login", re.I)).click()


def test_clinician_session(new_page, app_server, credentials, scenario, phantom_zip, artifacts):
    from app.chat import expert_title

    server, cfg = app_server
    user, password = credentials
    registry, question, expert, structure = scenario
    page = new_page()
    context = page.context
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)

    _login(page, server.url, user, password)
    page.locator("#m3-banner").wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    assert "scripted-test-backend" in page.locator("#m3-banner").inner_text()
    page.screenshot(path=str(artifacts / "01_logged_in.png"), full_page=True)

    page.locator("#m3-upload input[type=file]").set_input_files(str(phantom_zip))
    status = page.locator("#m3-study-status")
    status.filter(has_text="Loaded 1 series").wait_for(timeout=TIMEOUT_MS)
    table = page.locator("#m3-series-table").inner_text()
    assert "CT" in table and "96x96x40" in table and "Doe" not in page.content()
    page.locator("#m3-web-root.m3-web-ready").wait_for(timeout=TIMEOUT_MS)  # the browser viewer shows the series
    info = page.locator(".m3w-info")
    assert info.inner_text() == "Axial 21/40"
    page.locator(".m3w-stage").hover()
    for _ in range(13):  # the arrow keys scroll in the browser
        page.keyboard.press("ArrowDown")
    info.filter(has_text="Axial 8/40").wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "02_scrolled.png"), full_page=True)

    page.locator("#m3-question textarea").fill(question)
    page.locator("#m3-ask").click()
    chat = page.locator("#m3-chat")
    # the first expert call loads its weights and runs on the whole volume: allow it more time
    chat.get_by_text(re.compile(rf"According to {expert}.*{structure} volume: [\d.]+ mL")).wait_for(timeout=3 * TIMEOUT_MS)
    text = chat.inner_text()
    assert expert in text
    volume_ml = re.search(rf"{structure} volume: ([\d.]+) mL", text).group(1)
    steps = [t.splitlines()[0].strip() for t in chat.locator(".thought-group .title").all_inner_texts()]  # less "(5.3s)"
    assert steps == [expert_title(registry, expert)]  # the expert call is shown as its own step, by its title
    legend = page.locator(".m3w-labels")  # the browser viewer's legend: the expert's title, its labels and numbers
    legend.get_by_text(structure).first.wait_for(timeout=TIMEOUT_MS)
    assert volume_ml in legend.inner_text()  # the answer quotes the expert's number, shown by the overlay legend
    page.screenshot(path=str(artifacts / "03_answer_with_overlay.png"), full_page=True)

    page.locator("#m3-draft").click()
    findings = page.locator("#m3-findings textarea")
    page.wait_for_function("el => el.value.length > 0", arg=findings.element_handle(), timeout=TIMEOUT_MS)
    assert volume_ml in findings.input_value()
    findings.fill(findings.input_value() + "\nReviewed by the reading clinician.")
    page.locator("#m3-export").click()
    downloads = page.locator("#m3-downloads")
    page.locator("#m3-report-status").get_by_text("Exported").wait_for(timeout=TIMEOUT_MS)
    downloads.locator("a[href*='report.pdf']").first.wait_for(timeout=TIMEOUT_MS)
    names = downloads.inner_text().replace("\n.", ".")  # the file list shows names and extensions apart
    for name in ("report.md", "report_sr.dcm", f"{expert}_seg_1.dcm"):
        assert name in names
    link = downloads.locator("a[href*='report.md']").first.get_attribute("href")
    md = context.request.get(link if link.startswith("http") else server.url + link)
    assert md.status == 200 and "Reviewed by the reading clinician." in md.text() and volume_ml in md.text()
    page.locator("#m3-report").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "04_report_exported.png"), full_page=True)

    assert outside == [], f"requests left localhost: {outside[:5]}"
    audit = cfg.audit.log_path.read_text()
    assert question in audit and "Doe" not in audit


def test_wrong_password_gets_no_data(new_page, app_server, credentials, artifacts):
    server, _ = app_server
    page = new_page()
    context = page.context
    _login(page, server.url, credentials[0], "not the password")
    page.get_by_text(re.compile("incorrect", re.I)).wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "05_wrong_password.png"))
    assert page.locator("#m3-upload").count() == 0
    assert context.request.get(server.url + "/config").status == 401


def test_unauthenticated_api_call_is_refused(app_server):
    server, _ = app_server
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/gradio_api/call/ask", json={"data": ["What is the liver volume?"]}).status_code == 401
        assert http.post("/gradio_api/upload", files={"files": ("a.dcm", b"x")}).status_code == 401
        assert http.get("/gradio_api/info").status_code == 401
