"""The browser viewer's server side: the series goes out once as NIfTI with its own geometry, the payload describes
what to show, the page's slice report sets the slice "this slice" questions use, burned-in text is warned about,
and the files sit behind the login."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app.session import SessionState
from app.webviewer import apply_client_view, burned_in_note, viewer_payload, volume_nifti
from data.display import reformat
from data.study import Series, Study, Volume
from experts.base import ExpertResult, Measurement
from experts.overlay import label_colour


def _volume(shape=(20, 24, 12), affine=None, modality="CT") -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-100, 300, size=shape).astype(np.int16)
    if affine is None:  # stored L→R flipped, P→A flipped: as DICOM LPS slices arrive
        affine = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]], float)
    return Volume(array=array, affine=affine, modality=modality, series_uid="1.2.3")


def _state(volume: Volume, source_format: str = "dicom") -> SessionState:
    state = SessionState()
    state.set_study(Study(uid="9.9", series=[Series(uid="1.2.3", modality=volume.modality, description="test",
                                                   volume=volume, source_format=source_format)]))
    return state


def _read(state: SessionState, url: str) -> nib.Nifti1Image:
    from app.webviewer import _FILES

    path = _FILES.get(url.rsplit("/", 1)[1])
    return nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))


def test_the_series_goes_to_the_browser_as_nifti_with_its_own_voxels_and_affine():
    vol = _volume()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(volume_nifti(vol)))
    assert np.array_equal(np.asanyarray(image.dataobj), vol.array) and image.get_data_dtype() == np.int16
    assert np.allclose(image.affine, vol.affine) and image.header["sform_code"] == 1


def test_the_payload_names_the_series_window_presets_and_is_stable_while_nothing_changes():
    state = _state(_volume())
    first = viewer_payload(state, lambda name: name.upper())
    payload = json.loads(first)
    assert payload["window"] == [40.0, 400.0] and payload["presets"]["lung"] == [-600.0, 1500.0]
    assert "soft tissue" in payload["presets"] and payload["overlay"] is None and payload["warning"] == ""
    assert np.array_equal(np.asanyarray(_read(state, payload["volume"]).dataobj), state.volume.array)
    assert viewer_payload(state, lambda name: name.upper()) == first  # the page reloads nothing


def test_the_overlay_carries_the_experts_title_colours_volumes_and_largest_section():
    vol = _volume()
    mask = np.zeros(vol.shape, np.uint8)
    mask[5:10, 6:12, 7] = 1  # largest section on stored slice 7
    mask[5:7, 6:8, 2:4] = 2
    result = ExpertResult(expert="seg_v3", summary="", label_volume=vol.like(mask), label_names={1: "liver", 2: "liver tumour"},
                          measurements=[Measurement("liver", "volume", 12.5, "mL")])
    state = _state(vol)
    state.add_result(result, {"ct": vol})
    state.active_result = next(iter(state.results))
    overlay = json.loads(viewer_payload(state, lambda name: "CT segmentation"))["overlay"]
    assert overlay["title"] == "CT segmentation"
    liver, tumour = overlay["labels"]
    assert liver["colour"] == list(label_colour(1)) and tumour["colour"] == list(label_colour(2)) and liver["colour"] != tumour["colour"]
    assert "12.5 mL" in liver["text"]
    ijk = np.linalg.solve(vol.affine, [*liver["jump_mm"], 1.0])[:3]
    assert round(ijk[2]) == 7 and 5 <= ijk[0] <= 9 and 6 <= ijk[1] <= 11
    assert np.array_equal(np.asanyarray(_read(state, overlay["url"]).dataobj), mask)


def test_the_slice_reported_by_the_page_is_the_slice_this_slice_questions_use():
    vol = _volume()
    state = _state(vol)
    ijk = np.array([4, 7, 9])
    mm = (vol.affine @ np.append(ijk, 1))[:3]
    assert apply_client_view(state, json.dumps({"series": "1.2.3", "plane": "coronal", "mm": mm.tolist()}))
    assert state.view.plane == "coronal"
    # each plane's index is the one data.display.reformat shows: the same voxel on screen
    for plane in ("axial", "coronal", "sagittal"):
        shown = reformat(vol.like(np.zeros(vol.shape, np.int16)), plane, state.view.slices[plane])
        marked = vol.like(np.zeros(vol.shape, np.int16))
        marked.array[tuple(ijk)] = 1
        assert reformat(marked, plane, state.view.slices[plane]).image.sum() == 1, plane
        assert shown.image.shape
    assert not apply_client_view(state, json.dumps({"series": "another", "plane": "axial", "mm": mm.tolist()}))
    assert not apply_client_view(state, "not json")


@pytest.mark.parametrize(("modality", "flag", "source", "warned"), [
    ("US", "", "dicom", True), ("SC", "", "dicom", True), ("CT", "YES", "dicom", True), ("US", "NO", "dicom", False),
    ("CT", "", "dicom", False), ("OT", "", "nifti", False)])
def test_burned_in_text_is_warned_about_where_the_pixels_may_carry_it(modality, flag, source, warned):
    vol = _volume(modality=modality)
    vol.meta["burned_in_annotation"] = flag
    note = burned_in_note(Series(uid="1", modality=modality, description="", volume=vol, source_format=source))
    assert bool(note) == warned
    if warned:
        assert "burned-in" in note.lower() and "review before sharing" in note.lower()


def test_the_nifti_route_is_behind_the_login(tmp_path):
    import httpx
    from localhost import free_port

    from app.auth import hash_password
    from app.config import AppConfig
    from app.server import serve
    from experts.registry import ExpertRegistry

    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    cfg.auth.users_file = tmp_path / "users.toml"
    cfg.auth.users_file.write_text(f'[users]\n"dr.a" = "{hash_password("pw 12345678")}"\n')
    state = _state(_volume())
    url = json.loads(viewer_payload(state, str))["volume"]
    server = serve(cfg, backend=None, registry=ExpertRegistry(), block=False)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get(f"/{url}").status_code == 401
            assert http.get("/m3/viewer.js").status_code == 401
            assert http.post("/login", data={"username": "dr.a", "password": "pw 12345678"}).status_code in (200, 302, 303)
            got = http.get(f"/{url}")
            assert got.status_code == 200 and got.content == _FILES_bytes(url)
            assert http.get("/m3/volume/unknown.nii.gz").status_code == 404
            assert http.get("/m3/viewer.js").status_code == 200
    finally:
        server.close()


def _FILES_bytes(url: str) -> bytes:
    from app.webviewer import _FILES

    return _FILES.get(url.rsplit("/", 1)[1]).read_bytes()


def test_a_report_on_a_series_that_may_carry_burned_in_text_says_so(tmp_path):
    from app.audit import AuditLog
    from app.chat import ChatEngine
    from app.events import AppEvents, UploadLimits
    from app.report import write_markdown
    from experts.registry import ExpertRegistry

    audit = AuditLog(tmp_path / "audit.jsonl")
    events = AppEvents(ChatEngine(None, ExpertRegistry(), audit), audit, UploadLimits())
    markdown = write_markdown(events.make_report("No abnormality.", "", _state(_volume(modality="US")), None), tmp_path / "us.md")
    checks = Path(markdown).read_text().split("## Checks")[1]
    assert "burned-in annotation" in checks.lower()
    plain = write_markdown(events.make_report("No abnormality.", "", _state(_volume(modality="CT")), None), tmp_path / "ct.md")
    assert "burned-in" not in Path(plain).read_text().lower()


def test_organ_and_lesion_colours_stay_apart_for_colour_blind_readers():
    """Liver / liver tumour, lungs / nodule, kidneys / cyst, and the brain tumour's three parts: each pair differs in
    colour by a visible step (over 15 % in some channel) under simulated deuteranopia and protanopia (Machado 2009, severity 1)."""
    from data.phantoms.labels import CT_LABELS

    simulate = {"deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]),
                "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]])}
    pairs = [(1, 10), (5, 11), (6, 11), (3, 12), (4, 12), (1, 2), (1, 8), (1, 3), (1, 4)] + [(1, 2), (2, 3), (1, 3)]
    assert CT_LABELS[10] == "liver tumor" and CT_LABELS[11] == "lung nodule" and CT_LABELS[12] == "kidney cyst"
    for name, matrix in simulate.items():
        for a, b in pairs:
            seen_a, seen_b = (np.clip(matrix @ (np.asarray(label_colour(v)) / 255.0), 0, 1) for v in (a, b))
            assert np.abs(seen_a - seen_b).max() > 0.15, (name, a, b, seen_a, seen_b)
