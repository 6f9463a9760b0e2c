"""The browser viewer in Debian's Chromium (headless, WebGL2 in software): what a radiologist does with it.

Scrolling by wheel and keys lands on the expected slice and sends nothing to the server; dragging window / level and
the presets change the rendered pixels the expected way; zoom, pan, reset and the scale bar agree; the orientation
letters match the affine in every plane (a marker on the patient's right-anterior-superior side, stored in another
axis order); the ruler measures a 40 mm sphere and the ellipse gives its mean and SD; the overlay lands on the mask's
voxels in the label's colour and each label toggles; an ultrasound file gets the burned-in annotation warning; the
3-plane layout and cine work; a question carries the slice on screen. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser
TIMEOUT_MS = 60_000
SPHERE_DIAMETER_MM = 40.0
SPHERE_MEAN, NOISE_SD = 300.0, 10.0
PHANTOM_SPACING_MM = (0.8, 0.8, 2.5)  # RAS axes
PHANTOM_SHAPE = (200, 200, 48)  # RAS: 160 x 160 x 120 mm
MARKER_FRACTION = 0.82  # the marker's centre, as a fraction of each RAS axis: right, anterior, superior
STORED_AXES = ("P", "I", "R")  # the file's axis order: neither RAS nor DICOM's LPS


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory):
    """The app with the scripted chat backend and one fast expert with a mask (voxels above 100 HU), no login."""
    import scripted_backend
    from localhost import free_port

    from app.config import AppConfig
    from app.server import serve
    from experts.registry import ExpertRegistry

    class DenseTissue(scripted_backend.ThresholdExpert):
        title = "Dense tissue (test)"

    registry = ExpertRegistry()
    registry.register("threshold_volume", DenseTissue)
    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path_factory.mktemp("e2e-viewer") / "audit.jsonl"
    server = serve(cfg, backend=scripted_backend.ScriptedBackend(), registry=registry, block=False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(file, affine): a 40 mm sphere (mean 300, SD 10) at the centre and a bright 16 mm cube on the patient's
    right-anterior-superior side, stored with axes (P, I, R) and anisotropic voxels."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    rng = np.random.default_rng(3)
    ras = rng.normal(0.0, NOISE_SD, PHANTOM_SHAPE)
    axes_mm = [np.arange(n) * s for n, s in zip(PHANTOM_SHAPE, PHANTOM_SPACING_MM)]
    x, y, z = np.meshgrid(*axes_mm, indexing="ij")
    centre = [(n - 1) * s / 2 for n, s in zip(PHANTOM_SHAPE, PHANTOM_SPACING_MM)]
    ras[np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= SPHERE_DIAMETER_MM / 2] += SPHERE_MEAN
    marker = [MARKER_FRACTION * (n - 1) * s for n, s in zip(PHANTOM_SHAPE, PHANTOM_SPACING_MM)]
    ras[(abs(x - marker[0]) <= 8) & (abs(y - marker[1]) <= 8) & (abs(z - marker[2]) <= 8)] = 1000.0
    ras_affine = np.diag([*PHANTOM_SPACING_MM, 1.0])
    ras_affine[:3, 3] = [-c for c in centre]
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(STORED_AXES))
    stored = apply_orientation(np.rint(ras).astype(np.int16), transform)
    affine = ras_affine @ inv_ornt_aff(transform, PHANTOM_SHAPE)
    assert nib.aff2axcodes(affine) == STORED_AXES
    path = tmp_path_factory.mktemp("e2e-phantom") / "sphere_t1.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), path)
    return path, affine


# --- helpers ---------------------------------------------------------------------------------------
def _open_example(page, url: str) -> None:
    page.goto(url)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Example CT", exact=True).click()
    page.locator("#m3-web-root.m3-web-ready").wait_for(timeout=TIMEOUT_MS)
    _settle(page)


def _upload(page, url: str, path: Path, timeout_ms: int = TIMEOUT_MS) -> float:
    """Upload ``path``; seconds from the study's "Loaded" until the browser viewer shows it."""
    page.goto(url)
    page.locator("#m3-chat").wait_for(timeout=TIMEOUT_MS)
    page.locator("#m3-upload input[type=file]").set_input_files(str(path))
    page.locator("#m3-study-status").filter(has_text="Loaded 1 series").wait_for(timeout=timeout_ms)
    t0 = time.perf_counter()
    page.locator("#m3-web-root.m3-web-ready").wait_for(timeout=timeout_ms)
    _settle(page)
    return time.perf_counter() - t0


def _settle(page) -> None:
    """Wait until the viewer has drawn its last change (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _slice(page) -> tuple[str, int]:
    info = page.locator(".m3w-info")
    return info.get_attribute("data-plane"), int(info.get_attribute("data-index"))


def _stage(page) -> np.ndarray:
    """The viewer's picture as the screen shows it: (H, W, 3) uint8."""
    from PIL import Image

    _settle(page)
    return np.asarray(Image.open(io.BytesIO(page.locator(".m3w-stage").screenshot())).convert("RGB"))


def _save(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def _tile(page) -> tuple[list[float], float]:
    """([left, top, width, height] in CSS pixels of the first slice tile inside the canvas, its pixels per mm)."""
    tile, fov_mm = page.evaluate("""() => { const nv = window.m3Viewer.current.nv; const d = nv.uiData.dpr || 1;
        const s = nv.screenSlices[0]; return [Array.from(s.leftTopWidthHeight).map(v => v / d), Array.from(s.fovMM)] }""")
    return tile, tile[2] / abs(fov_mm[0])


def _image_rect(page, width_mm: float, height_mm: float) -> tuple[float, float, float, float]:
    """(left, top, width, height) in CSS pixels of a slice ``width_mm`` x ``height_mm`` shown unzoomed: centred in its tile."""
    (left, top, width, height), px_per_mm = _tile(page)
    w, h = width_mm * px_per_mm, height_mm * px_per_mm
    return left + (width - w) / 2, top + (height - h) / 2, w, h


def _blob(mask: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(column, row) centroid of ``mask`` and its pixel coordinates."""
    rows, cols = np.nonzero(mask)
    assert rows.size, "nothing bright on screen"
    return float(cols.mean()), float(rows.mean()), np.stack([rows, cols], axis=1)


# --- scrolling ---------------------------------------------------------------------------------------
def test_wheel_and_keys_scroll_to_the_expected_slice_without_any_server_request(new_page, viewer_server, artifacts):
    page = new_page()
    _open_example(page, viewer_server.url)
    assert _slice(page) == ("axial", 32) and page.locator(".m3w-info").inner_text() == "Axial 33/64"
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.locator(".m3w-stage").hover()
    for _ in range(5):  # five notches down: five slices on
        page.mouse.wheel(0, 100)
        _settle(page)
    assert _slice(page) == ("axial", 37)
    page.mouse.wheel(0, -100)
    _settle(page)
    page.keyboard.press("ArrowUp")
    page.keyboard.press("PageDown")  # a tenth of the slices back
    _settle(page)
    assert _slice(page) == ("axial", 37 - 1 + 1 - 6)
    page.locator("button[data-m3=coronal]").click()
    page.keyboard.press("ArrowDown")
    _settle(page)
    assert _slice(page) == ("coronal", 63)
    page.screenshot(path=str(artifacts / "viewer_01_scrolled.png"))
    assert requests == [], f"scrolling asked the server: {requests[:5]}"


def test_a_question_carries_the_slice_on_screen(new_page, viewer_server):
    from app.webviewer import _canonical_indices
    from data.phantoms import generate

    page = new_page()
    _open_example(page, viewer_server.url)
    page.locator(".m3w-stage").hover()
    for _ in range(7):
        page.keyboard.press("ArrowDown")
    _settle(page)
    plane, index = _slice(page)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if "queue/join" in r.url else None)
    page.locator("#m3-question textarea").fill("What is on this slice?")
    page.locator("#m3-ask").click()
    page.locator("#m3-chat").filter(has_text="this slice").wait_for(timeout=TIMEOUT_MS)
    views = [json.loads(v) for body in sent for v in json.loads(body)["data"] if isinstance(v, str) and v.startswith("{")]
    assert views and views[-1]["plane"] == plane == "axial"
    volume = generate("ct", 7).volume  # the example study the page opened
    assert _canonical_indices(volume, np.asarray(views[-1]["mm"]))["axial"] == index == 25


# --- window / level ----------------------------------------------------------------------------------
def test_dragging_window_level_and_the_presets_change_the_rendered_pixels_as_expected(new_page, viewer_server, artifacts):
    page = new_page()
    _open_example(page, viewer_server.url)
    wl = page.locator(".m3w-wl")
    assert wl.inner_text() == "W 400 / L 40"
    before = _stage(page)
    h, w = before.shape[:2]
    body = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))  # soft tissue around the centre
    box = page.locator(".m3w-stage").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(cx + 12 * step, cy)  # drag right
    page.mouse.up()
    after = _stage(page)
    width = float(wl.get_attribute("data-width"))
    assert wl.inner_text() != "W 400 / L 40" and abs(width - 400) > 20
    spread_before, spread_after = before[body].std(), after[body].std()
    # a wider window lowers the contrast of the same tissue, a narrower one raises it
    assert (spread_after < spread_before) if width > 400 else (spread_after > spread_before), (width, spread_before, spread_after)
    _save(after, artifacts / "viewer_02_wl_dragged.png")

    page.locator("select.m3w-preset").select_option("lung")
    lung = _stage(page)
    assert wl.inner_text() == "W 1500 / L -600"
    # soft tissue (~40 HU) sits near the top of the lung window: brighter than in the soft-tissue window
    page.locator("select.m3w-preset").select_option("soft tissue")
    soft = _stage(page)
    assert wl.inner_text() == "W 400 / L 40"
    assert lung[body].mean() > soft[body].mean() + 40
    _save(lung, artifacts / "viewer_03_lung_preset.png")


# --- zoom, pan, reset, scale bar, layout, cine -------------------------------------------------------
def test_zoom_pan_reset_and_the_scale_bar_agree(new_page, viewer_server, artifacts):
    page = new_page()
    _open_example(page, viewer_server.url)
    bar = page.locator(".m3w-scale-bar")

    def scale() -> tuple[float, float, float, str]:
        _settle(page)
        return (float(bar.get_attribute("data-px-per-mm")), float(bar.get_attribute("data-mm")), bar.bounding_box()["width"],
                page.locator(".m3w-scale-text").inner_text())

    px_mm, mm, bar_px, text = scale()
    assert px_mm == pytest.approx(_tile(page)[1], rel=1e-3)  # the scale of the tile the overlay test checks voxel by voxel
    assert bar_px == pytest.approx(mm * px_mm, abs=2) and text == (f"{mm / 10:g} cm" if mm >= 10 else f"{mm:g} mm")
    start = _stage(page)
    box = page.locator(".m3w-stage").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")  # the right button pans whatever the tool
    for step in range(1, 9):
        page.mouse.move(cx + 5 * step, cy + 3 * step)
    page.mouse.up(button="right")
    panned = _stage(page)
    col0, row0, _ = _blob(start.mean(axis=2) > 60)
    col1, row1, _ = _blob(panned.mean(axis=2) > 60)
    assert col1 - col0 == pytest.approx(40, abs=4) and row1 - row0 == pytest.approx(24, abs=4)  # the picture follows the mouse
    page.locator("button[data-m3='+']").click()
    zoomed = scale()
    assert zoomed[0] == pytest.approx(1.25 * px_mm, rel=0.02)
    assert zoomed[2] == pytest.approx(zoomed[1] * zoomed[0], abs=2)
    _save(_stage(page), artifacts / "viewer_04_panned_zoomed.png")
    page.locator("button[data-m3=Reset]").click()
    assert scale()[0] == pytest.approx(px_mm, rel=0.01)
    col2, row2, _ = _blob(_stage(page).mean(axis=2) > 60)
    assert abs(col2 - col0) < 3 and abs(row2 - row0) < 3


def test_three_planes_and_cine(new_page, viewer_server, artifacts):
    page = new_page()
    _open_example(page, viewer_server.url)
    page.locator("button[data-m3='3 planes']").click()
    _settle(page)
    kinds = page.evaluate("() => window.m3Viewer.current.nv.screenSlices.map(s => s.axCorSag)")
    assert {0, 1, 2} <= set(kinds)
    _save(_stage(page), artifacts / "viewer_05_three_planes.png")
    page.locator("button[data-m3=axial]").click()
    _, first = _slice(page)
    page.locator("button[data-m3=Cine]").click()
    time.sleep(1.0)
    page.locator("button[data-m3=Cine]").click()
    _, moved = _slice(page)
    assert (moved - first) % 64 >= 5  # ~15 slices a second, looping at the last slice
    time.sleep(0.3)
    assert _slice(page)[1] == moved  # stopped


# --- orientation, ruler, ellipse -----------------------------------------------------------------------
EXPECTED_SIDES = {"axial": ("R", "A"), "coronal": ("R", "S"), "sagittal": ("A", "S")}  # the marker's sides per plane


def test_the_orientation_letters_match_the_affine_in_each_plane(new_page, viewer_server, phantom_nifti, artifacts):
    path, affine = phantom_nifti
    page = new_page()
    _upload(page, viewer_server.url, path)
    ras_index = [MARKER_FRACTION * (n - 1) for n in PHANTOM_SHAPE]
    marker_mm = (np.diag([*PHANTOM_SPACING_MM, 1.0]) @ [*ras_index, 1.0])[:3] - [(n - 1) * s / 2 for n, s in zip(PHANTOM_SHAPE, PHANTOM_SPACING_MM)]
    page.evaluate("(mm) => window.m3Viewer.current.goToMM(mm)", marker_mm.tolist())
    for plane, expected in EXPECTED_SIDES.items():
        page.locator(f"button[data-m3={plane}]").click()
        picture = _stage(page)
        _save(picture, artifacts / f"viewer_06_orientation_{plane}.png")
        col, row, _ = _blob(picture.min(axis=2) > 230)  # the saturated marker
        h, w = picture.shape[:2]
        assert abs(col - w / 2) > 0.08 * w and abs(row - h / 2) > 0.08 * h, (plane, col, row, w, h)
        letter = {side: page.locator(f".m3w-{side}").inner_text() for side in ("left", "right", "top", "bottom")}
        horizontal = letter["left"] if col < w / 2 else letter["right"]
        vertical = letter["top"] if row < h / 2 else letter["bottom"]
        assert (horizontal, vertical) == expected, (plane, letter)


def test_the_ruler_measures_the_40_mm_sphere_and_the_ellipse_gives_its_mean_and_sd(new_page, viewer_server, phantom_nifti, artifacts):
    path, _ = phantom_nifti
    page = new_page()
    _upload(page, viewer_server.url, path)
    assert _slice(page)[0] == "axial"
    picture = _stage(page).mean(axis=2)
    bright = picture > picture.max() * 0.5  # the sphere's edge at half its brightness
    col, row, pixels = _blob(bright)
    line = np.nonzero(bright[int(round(row))])[0]
    left, right = line.min(), line.max() + 1
    box = page.locator(".m3w-stage").bounding_box()
    page.locator("button[data-m3=Ruler]").click()
    y = box["y"] + row
    page.mouse.move(box["x"] + left, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + left + (right - left) * step / 10, y)
    page.mouse.up()
    readout = page.locator(".m3w-readout")
    readout.filter(has_text="Distance").wait_for(timeout=TIMEOUT_MS)
    distance = float(readout.get_attribute("data-distance-mm"))
    _save(_stage(page), artifacts / "viewer_07_ruler.png")
    assert abs(distance - SPHERE_DIAMETER_MM) <= 2.0, distance
    assert re.fullmatch(r"Distance \d+\.\d mm", readout.inner_text())

    page.locator("button[data-m3=Ellipse]").click()
    half = (right - left) * 0.3  # well inside the sphere
    page.mouse.move(box["x"] + col - half, box["y"] + row - half)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + col - half + 2 * half * step / 10, box["y"] + row - half + 2 * half * step / 10)
    page.mouse.up()
    readout.filter(has_text="Ellipse").wait_for(timeout=TIMEOUT_MS)
    _save(_stage(page), artifacts / "viewer_08_ellipse.png")
    mean, sd = float(readout.get_attribute("data-roi-mean")), float(readout.get_attribute("data-roi-sd"))
    assert abs(mean - SPHERE_MEAN) < 3 and abs(sd - NOISE_SD) < 3, readout.inner_text()
    assert "signal" in readout.inner_text()  # an MR-named file: signal units, not HU


# --- overlays ------------------------------------------------------------------------------------------
def test_the_overlay_lands_on_the_mask_in_its_colour_and_each_label_toggles(new_page, viewer_server, artifacts):
    from nibabel.orientations import apply_orientation, io_orientation
    from scipy.ndimage import binary_dilation, binary_erosion

    from data.phantoms import generate
    from experts.overlay import label_colour

    page = new_page()
    _open_example(page, viewer_server.url)
    page.get_by_role("button", name="Dense tissue (test)").click()
    labels = page.locator(".m3w-labels")
    labels.filter(has_text="dense tissue").wait_for(timeout=TIMEOUT_MS)
    text = labels.inner_text()
    assert "Dense tissue (test)" in text and re.search(r"dense tissue volume: [\d.]+ mL", text)  # the expert's title and numbers
    assert not page.locator("#m3-legend .m3-legend").is_visible()  # one legend, not two
    page.locator("#m3-opacity input[type=range]").fill("1")
    page.wait_for_function("() => window.m3Viewer.current.nv.volumes[1] && window.m3Viewer.current.nv.volumes[1].opacity === 1",
                           timeout=TIMEOUT_MS)
    shown = _stage(page).astype(int)
    labels.locator("input[type=checkbox][data-label='1']").uncheck()
    hidden = _stage(page).astype(int)
    _save(shown.astype(np.uint8), artifacts / "viewer_09_overlay.png")

    plane, index = _slice(page)
    volume = generate("ct", 7).volume
    mask = (np.asarray(volume.array) > 100).astype(np.uint8)  # what the test expert marks
    ras = apply_orientation(mask, io_orientation(volume.affine))[:, :, index]  # (X, Y) on the axial slice on screen
    left, top, width, height = _image_rect(page, ras.shape[0] * volume.spacing[0], ras.shape[1] * volume.spacing[1])
    # the scale bar's pixels per mm are the ones this voxel-by-voxel placement uses
    assert float(page.locator(".m3w-scale-bar").get_attribute("data-px-per-mm")) == pytest.approx(width / (ras.shape[0] * volume.spacing[0]), rel=1e-3)
    rows, cols = np.mgrid[0:shown.shape[0], 0:shown.shape[1]]
    u, v = (cols + 0.5 - left) / width, (rows + 0.5 - top) / height
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    x = np.clip(((1 - u) * ras.shape[0]).astype(int), 0, ras.shape[0] - 1)  # radiological: the patient's right on the left
    y = np.clip(((1 - v) * ras.shape[1]).astype(int), 0, ras.shape[1] - 1)  # anterior at the top
    expected = inside & (ras[x, y] > 0)
    changed = np.abs(shown - hidden).sum(axis=2) > 30
    # label edges are drawn smoothed (linear sampling, as the image): judge the pixels more than a voxel from a mask edge
    voxel_px = int(np.ceil(width / ras.shape[0]))
    edge = binary_dilation(expected, iterations=voxel_px) & ~binary_erosion(expected, iterations=voxel_px)
    dice = 2 * (changed & expected & ~edge).sum() / ((changed & ~edge).sum() + (expected & ~edge).sum())
    stray = (changed & ~binary_dilation(expected, iterations=voxel_px)).sum()  # colour where the mask is not
    assert plane == "axial" and expected.sum() > 5000 and dice > 0.98 and stray < 0.01 * expected.sum(), (dice, stray)
    core = expected & ~edge
    colour = np.median(shown[core], axis=0)
    assert np.abs(colour - np.asarray(label_colour(1))).max() <= 12, colour

    # the legend's ⌖ goes to the label's largest cross-section (where the overlay opened), from wherever the user is
    busiest = int(np.argmax(apply_orientation(mask, io_orientation(volume.affine)).sum(axis=(0, 1))))
    assert index == busiest
    page.locator(".m3w-stage").hover()
    for _ in range(6):
        page.mouse.wheel(0, 100)
        _settle(page)
    assert _slice(page)[1] == busiest + 6
    labels.locator("button.m3w-go[data-label='1']").click()
    _settle(page)
    assert _slice(page) == ("axial", busiest)


# --- burned-in annotation --------------------------------------------------------------------------------
def test_an_ultrasound_file_is_shown_with_the_burned_in_annotation_warning(new_page, viewer_server, artifacts):
    from pydicom.data import get_testdata_file  # pydicom-data's files, installed with the dev extras

    page = new_page()
    _upload(page, viewer_server.url, Path(get_testdata_file("US1_UNCI.dcm")))
    warning = page.locator(".m3w-warning")
    assert warning.is_visible() and "burned-in annotation" in warning.inner_text().lower()
    assert page.locator(".m3w-wl").inner_text() == "colour image" and page.locator("select.m3w-preset").is_disabled()
    assert page.locator("button[data-m3=coronal]").is_disabled()  # one frame: no other planes
    picture = _stage(page)
    assert (np.abs(picture[..., 0].astype(int) - picture[..., 2]) > 30).mean() > 0.001  # shown in colour
    page.screenshot(path=str(artifacts / "viewer_10_ultrasound_burned_in.png"))


# --- layout --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1920, 1080)])
def test_the_series_table_reads_cleanly_and_the_report_is_one_click_away(new_page, viewer_server, artifacts, width, height):
    page = new_page(viewport={"width": width, "height": height})
    _open_example(page, viewer_server.url)
    headers = [h.strip() for h in page.locator("#m3-series-table th").all_inner_texts()]
    assert headers == ["#", "Modality", "Description", "Voxels", "Spacing (mm)"]
    # every header and every cell but the description on one line, its text (not its clipped box) inside its column
    layout = page.evaluate("""() => [...document.querySelectorAll(
        '#m3-series-table th span.header, #m3-series-table [role=gridcell]:not([data-col="2"]) span')].map(span => {
          const cell = span.closest('th, [role=gridcell]').getBoundingClientRect();
          const range = document.createRange();
          range.selectNodeContents(span);
          const text = range.getBoundingClientRect();
          return [span.textContent, range.getClientRects().length, text.right <= cell.right + 0.5];
        })""")
    assert layout and all(lines == 1 and inside for _, lines, inside in layout), [cell for cell in layout if cell[1:] != [1, True]]
    stage = page.locator(".m3w-stage").bounding_box()
    assert stage["y"] + stage["height"] <= height  # the whole picture on the first screen
    page.screenshot(path=str(artifacts / f"viewer_11_layout_{width}x{height}.png"))
    page.locator("#m3-report-link a").click()
    draft = page.locator("#m3-draft").bounding_box()
    page.wait_for_function("() => { const r = document.querySelector('#m3-draft').getBoundingClientRect(); "
                           "return r.top >= 0 && r.bottom <= window.innerHeight }", timeout=TIMEOUT_MS)
    assert draft is not None


# --- speed -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wheel_scrolling_a_300_slice_ct_stays_in_the_browser_at_30_slices_a_second(new_page, viewer_server, tmp_path, artifacts):
    """A 512 x 512 x 300 CT. Measured: slices shown when each wheel notch waits for its slice to be drawn in a frame;
    Playwright's wheel events as fast as they come; the browser's frame rate with nothing changing; the viewer's own
    cost of one slice step (move and issue the draw). Asserted: no server request while scrolling, every notch drawn,
    and >= 30 slices shown a second. The figures go to tests/artifacts/viewer_scroll_speed.json."""
    import nibabel as nib

    rng = np.random.default_rng(5)
    shape = (512, 512, 300)
    x, y = np.meshgrid(np.arange(shape[0]) - 255.5, np.arange(shape[1]) - 255.5, indexing="ij")
    body = ((x / 230) ** 2 + (y / 170) ** 2 <= 1)[..., None]
    ct = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 21, size=shape, dtype=np.int16)
    ct[200:260, 230:290, :] = 400  # a bone-like bar through every slice
    path = tmp_path / "ct_300.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.diag([0.7, 0.7, 1.0, 1.0])), path)
    page = new_page()
    load_s = _upload(page, viewer_server.url, path, timeout_ms=300_000)
    assert page.locator(".m3w-info").inner_text() == "Axial 151/300"  # the middle, as NiiVue opens it
    page.evaluate("() => window.m3Viewer.current.goToMM(window.m3Viewer.current.nv.frac2mm([0.5, 0.5, 0.001]))")
    _settle(page)
    assert _slice(page) == ("axial", 0)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.locator(".m3w-stage").hover()

    measured = page.evaluate("""async () => {
        const v = window.m3Viewer.current, nv = v.nv, gl = nv.gl, stage = document.querySelector('.m3w-stage');
        const r = stage.getBoundingClientRect(), frame = () => new Promise(f => requestAnimationFrame(f));
        const notch = (dy) => stage.dispatchEvent(new WheelEvent('wheel', {deltaY: dy, clientX: r.left + r.width / 2,
                                                   clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));
        let t0 = performance.now();
        for (let i = 0; i < 60; i++) await frame();
        const idleFps = 60 / ((performance.now() - t0) / 1000);
        const frames0 = v.frames;
        t0 = performance.now();
        for (let i = 0; i < 299; i++) { notch(100); await frame(); }  // each notch drawn in its own frame
        await frame();
        const shown = 299 / ((performance.now() - t0) / 1000), drawn = v.frames - frames0, index = v.sliceIndex('axial');
        t0 = performance.now();
        for (let i = 0; i < 299; i++) nv.moveCrosshairInVox(0, 0, -1);  // the viewer's own cost: move and draw
        gl.finish();
        const stepMs = (performance.now() - t0) / 299;
        return {idleFps, shown, drawn, index, stepMs, back: v.sliceIndex('axial')};
    }""")
    assert measured["index"] == 299 and measured["drawn"] == 299 and measured["back"] == 0
    t0 = time.perf_counter()
    for _ in range(299):  # Playwright's own wheel events, as fast as they come
        page.mouse.wheel(0, 100)
    page.wait_for_function("() => window.m3Viewer.current.sliceIndex('axial') === 299", timeout=TIMEOUT_MS)
    playwright_rate = 299 / (time.perf_counter() - t0)
    result = {"slices_per_s_shown_one_per_frame": round(measured["shown"], 1), "idle_frames_per_s": round(measured["idleFps"], 1),
              "slices_per_s_playwright_wheel": round(playwright_rate, 1), "step_ms_move_and_draw": round(measured["stepMs"], 2),
              "slices_per_s_step_capacity": round(1000 / measured["stepMs"], 0), "requests_while_scrolling": len(requests),
              "series_to_browser_s": round(load_s, 1), "nifti_gz_mb": round(path.stat().st_size / 2**20, 1)}
    (artifacts / "viewer_scroll_speed.json").write_text(json.dumps(result, indent=1))
    print("scroll speed:", result)
    assert requests == [], requests[:5]
    assert measured["shown"] >= 30, result  # the target (issue #35); software WebGL on 2 shared cores shows 13-16
