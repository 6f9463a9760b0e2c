"""One picture path: what the model is shown in the app equals what it was trained on for the same phantom and
slice (CT, brain MRI with its four sequences, chest radiograph), whatever the viewer's window or plane."""

from __future__ import annotations

import numpy as np
import pytest

from app.audit import AuditLog
from app.chat import ChatEngine
from app.events import EXAMPLE_SEED, AppEvents, UploadLimits
from app.session import SessionState
from data.display import native_axial_index
from data.instructions.views import make_view
from data.phantoms import generate


class _Request:
    username = "carol"


class _RecordingBackend:
    """Answers "ok" and keeps the pictures of every request."""

    def __init__(self, scripted_module) -> None:
        from dataclasses import replace

        self.info = replace(scripted_module.ScriptedBackend.info, takes_images=True)
        self.images: list[list[np.ndarray]] = []

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        self.images.append([np.asarray(i) for i in (images or [])])
        yield "ok"


@pytest.fixture()
def scripted_module():
    import scripted_backend

    return scripted_backend


def _app(tmp_path, scripted_module):
    from experts.registry import ExpertRegistry

    backend = _RecordingBackend(scripted_module)
    audit = AuditLog(tmp_path / "audit.jsonl")
    return AppEvents(ChatEngine(backend, ExpertRegistry(), audit), audit, UploadLimits(100, 50)), backend


def _display_index(volume, k: int) -> int:
    """The viewer's axial index showing the volume's own slice ``k``."""
    return next(i for i in range(volume.shape[2]) if native_axial_index(volume, i) == k)


@pytest.mark.parametrize("label,kind", [("Example CT", "ct"), ("Example brain MRI", "mri"), ("Example chest X-ray", "cxr")])
def test_the_app_shows_the_model_the_training_picture_of_the_slice_on_screen(tmp_path, scripted_module, label, kind):
    training = make_view(generate(kind, EXAMPLE_SEED), np.random.default_rng(3))  # the training data's picture(s)
    events, backend = _app(tmp_path, scripted_module)
    state = SessionState()
    events.example(label, state, _Request(), progress=lambda *a, **k: None)
    if training.slice_index is not None:
        events.set_slice(_display_index(state.volume, training.slice_index) + 1, state)  # the slider counts from 1
    events.set_preset("percentile", state)  # the clinician's window is for the clinician, not the model
    list(events.ask("What do you see?", state, _Request()))
    shown = backend.images[-1]
    assert len(shown) == len(training.images) == (4 if kind == "mri" else 1)
    for got, want in zip(shown, training.images.values()):
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1  # T1's window rounds in DICOM
    state.close()


def test_scrolling_gives_the_model_one_picture_set_of_the_new_slice(tmp_path, scripted_module):
    events, backend = _app(tmp_path, scripted_module)
    state = SessionState()
    events.example("Example CT", state, _Request(), progress=lambda *a, **k: None)
    list(events.ask("What do you see?", state, _Request()))
    list(events.ask("And now?", state, _Request()))  # same slice: no new picture
    assert [len(i) for i in backend.images] == [1, 1]
    events.set_slice(5, state)
    events.set_plane("coronal", state)  # another plane: the model keeps the last axial slice
    list(events.ask("And here?", state, _Request()))
    assert len(backend.images[-1]) == 1 and not np.array_equal(backend.images[-1][0], backend.images[0][0])
    assert state.chat.conversation.picture_slice == native_axial_index(state.volume, 4)
    state.close()
