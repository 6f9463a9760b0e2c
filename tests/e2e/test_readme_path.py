"""The README's path, end to end in Debian's Chromium: the app started exactly as ``make demo`` starts it
(``m3 demo --host 127.0.0.1 --port PORT``, the embedded default model, the real experts), Example CT, Example
brain MRI and Example chest X-ray opened, every expert button pressed on each, the README's example questions
typed in the chat box and their answers checked against the phantoms' truth and the expert the model called,
and the four report files exported and opened again.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from localhost import free_port, stop_process

pytestmark = pytest.mark.browser
TIMEOUT_MS = 120_000  # one expert run or one answer of the CPU model on a busy 2-core machine
README = Path(__file__).resolve().parents[2] / "README.md"
TITLES = ["CT segmentation", "Brain tumour segmentation", "Chest X-ray findings"]
# example → (the expert that reads it, what it is, the README's question, the expert the model must call)
EXAMPLES = {
    "Example CT": ("CT segmentation", "an abdominal CT", "What is the liver volume?", "ct_segmentation"),
    "Example brain MRI": ("Brain tumour segmentation", "a brain MRI", "Is there a brain tumor?", "mri_brain_tumor"),
    "Example chest X-ray": ("Chest X-ray findings", "a chest X-ray", "Is there a pleural effusion?", "cxr_classification"),
}
READS = {"CT segmentation": "CT series", "Brain tumour segmentation": "MRI series (T1, T1c, T2, FLAIR together)",
         "Chest X-ray findings": "X-ray images"}
INTERNAL_WORDS = ("ct_segmentation", "mri_brain_tumor", "cxr_classification", "load_studies", "steps-continued", "{", "}",
                  "unresolved reference", "malformed reference", "Traceback")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``m3 demo`` in a subprocess from a scratch folder (its audit log is ``var/audit.jsonl`` there), as
    ``make demo`` runs it; the environment's own ``M3_*`` settings are left out."""
    folder = tmp_path_factory.mktemp("m3-demo")
    port = free_port()
    m3 = Path(sys.executable).with_name("m3")
    command = [str(m3)] if m3.is_file() else [sys.executable, "-m", "app.main"]
    command += ["demo", "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3_")}
    log = folder / "demo.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, health = time.monotonic() + 300, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health is not None and health.status_code == 200, log.read_text()[-3000:]
        assert health.json()["checks"]["chat_model"]["ok"], health.json()
        yield url, folder
    finally:
        stop_process(server, timeout=20)


def test_the_readme_questions_are_the_ones_asked_here():
    readme = README.read_text()
    for _, _, question, _ in EXAMPLES.values():
        assert f'"{question}"' in readme, question


def test_the_readme_path_in_a_browser(new_page, demo, artifacts):
    from data.phantoms import generate

    url, folder = demo
    page = new_page()
    page.goto(url)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    assert "Model:" in page.locator("#m3-banner").inner_text() and "Chat is off" not in page.content()
    assert [b.strip() for b in page.locator(".m3-expert").all_inner_texts()] == TITLES
    audit = folder / "var" / "audit.jsonl"

    for n, (example, (reads_it, what, question, expert)) in enumerate(EXAMPLES.items(), start=1):
        page.get_by_role("button", name=example, exact=True).click()
        page.locator("#m3-study-status").filter(has_text="Loaded").wait_for(timeout=TIMEOUT_MS)
        page.locator("#m3-chat [data-testid=user]").first.wait_for(state="detached", timeout=TIMEOUT_MS)  # a new chat
        for title in TITLES:  # every button runs, or says plainly why it does not apply
            status = page.locator("#m3-expert-status")
            page.get_by_role("button", name=title, exact=True).click()
            if title == reads_it:
                status.filter(has_text=f"{title} finished in").wait_for(timeout=TIMEOUT_MS)
            else:
                said = title[0].lower() + title[1:] if title[1].islower() else title  # "brain tumour…", "CT…"
                reason = f"The {said} expert reads {READS[title]}; this study is {what}."
                status.filter(has_text=reason).wait_for(timeout=TIMEOUT_MS)
        # the browser viewer's legend holds a mask's labels; the page's legend the rest (a radiograph has no mask)
        legend = page.locator("#m3-legend").inner_text() + " ".join(page.locator(".m3w-labels").all_inner_texts())
        assert reads_it in legend
        page.screenshot(path=str(artifacts / f"readme_{n}a_{example.split()[-1]}_experts.png"), full_page=True)

        page.locator("#m3-question textarea").fill(question)
        page.locator("#m3-question textarea").press("Enter")
        entry = _audited_answer(audit, question)
        assert [c["name"] for c in entry["tool_calls"]] == [expert], entry["tool_calls"]  # the right expert was called
        answer = entry["answer"].split("\n\n")[0]
        bot = page.locator("#m3-chat [data-testid=bot]").last
        bot.filter(has_text=answer).wait_for(timeout=TIMEOUT_MS)
        titles = page.locator("#m3-chat .thought-group .title").all_inner_texts()
        steps = [t.splitlines()[0].strip() for t in titles]  # without the duration, "(5.3s)"
        assert steps[-1].startswith(reads_it), steps  # the chat's step names the expert the model called
        if expert == "ct_segmentation":
            truth_ml = generate("ct", 7).truth["organ_volumes_ml"]["liver"]
            assert steps[-1] == "CT segmentation · liver" and "liver" in answer.lower(), (steps, answer)
            said_ml = float(re.search(r"([\d.]+)\s*mL", answer).group(1))
            assert abs(said_ml - truth_ml) <= 0.10 * truth_ml, (answer, truth_ml)
        elif expert == "mri_brain_tumor":
            assert generate("mri", 7).truth["tumor_present"] and re.match(r"yes\b", answer.lower()), answer
        else:
            assert not generate("cxr", 7).truth["findings"]["pleural effusion"] and re.match(r"no\b", answer.lower()), answer
        page.screenshot(path=str(artifacts / f"readme_{n}b_{example.split()[-1]}_answer.png"), full_page=True)
        shown = " ".join(page.locator(f"#{e}").inner_text() for e in
                         ("m3-chat", "m3-expert-status", "m3-legend", "m3-series-table", "m3-study-status", "m3-overlay"))
        assert not [w for w in INTERNAL_WORDS if w in shown], shown  # clinician wording: no raw JSON, no internal names
        if expert == "ct_segmentation":
            _export_and_reopen(page, url, artifacts)


def _audited_answer(audit: Path, question: str, timeout_s: float = TIMEOUT_MS / 1000) -> dict:
    """The audit log's answer to ``question`` (written once the answer is complete)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if audit.is_file():
            entries = [json.loads(line) for line in audit.read_text().splitlines()]
            answers = [e for e in entries if e["event"] == "answer" and e["question"] == question]
            if answers:
                return answers[-1]
        time.sleep(0.25)
    raise AssertionError(f"no answer to {question!r} in {audit} after {timeout_s:.0f} s")


def _export_and_reopen(page, url: str, artifacts: Path) -> None:
    """Draft, export, download the four files and read each back: Markdown, PDF, DICOM SR, DICOM SEG."""
    import pydicom

    page.locator("#m3-draft").click()
    findings = page.locator("#m3-findings textarea")
    page.wait_for_function("el => el.value.trim().length > 0", arg=findings.element_handle(), timeout=TIMEOUT_MS)
    page.locator("#m3-export").click()
    page.locator("#m3-report-status").filter(has_text="Exported").wait_for(timeout=TIMEOUT_MS)
    downloads = page.locator("#m3-downloads")
    downloads.locator("a[href*='report.pdf']").first.wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-report").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "readme_1c_CT_exported.png"), full_page=True)
    links = {Path(h.split("?")[0]).name: h for h in
             (a.get_attribute("href") for a in downloads.locator("a[href*='/file=']").all()) if h}
    segs = [name for name in links if name.startswith("ct_segmentation_seg_")]
    assert {"report.md", "report.pdf", "report_sr.dcm"} <= set(links) and segs, links

    def fetch(name: str) -> bytes:
        href = links[name]
        response = page.context.request.get(href if href.startswith("http") else url + href)
        assert response.status == 200, (name, response.status)
        return response.body()

    markdown = fetch("report.md").decode()
    assert "## Findings" in markdown and findings.input_value().strip().splitlines()[0] in markdown
    assert fetch("report.pdf").startswith(b"%PDF")
    sr = pydicom.dcmread(io.BytesIO(fetch("report_sr.dcm")))
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    seg = pydicom.dcmread(io.BytesIO(fetch(segs[0])))
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert seg.Modality == "SEG" and "liver" in labels, labels
