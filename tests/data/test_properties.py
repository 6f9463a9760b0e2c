"""Property tests: file order never changes the volume; affines agree with DICOM's own geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import load_study

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory, write_series):
    volume = np.random.default_rng(1).integers(0, 2000, size=(7, 5, 5)).astype(np.int16)
    folder = tmp_path_factory.mktemp("order")
    zs = [3.0, -1.0, 7.0, 1.0, 5.0]  # slice k of `volume` sits at zs[k]: the volume must come back sorted by z
    paths = write_series(folder, volume, positions=[np.array([0.0, 0.0, z]) for z in zs],
                                instance_numbers=[5, 4, 3, 2, 1])
    expected = volume[:, :, np.argsort(zs)].astype(np.int32) - 1024
    return paths, expected


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(5)))
def test_file_order_never_changes_the_volume(slice_files, order):
    paths, expected = slice_files
    volume = load_study([paths[i] for i in order]).series[0].volume
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine[:3, 3], LPS_TO_RAS @ [0.0, 0.0, -1.0])


def _rotation(q) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.2),
       spacing=st.tuples(st.floats(0.2, 3.0), st.floats(0.2, 3.0), st.floats(0.5, 6.0)),
       origin=st.tuples(*[st.floats(-300, 300)] * 3),
       voxel=st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)))
def test_affine_matches_dicom_geometry_and_round_trips(write_series, tmp_path_factory, q, spacing, origin, voxel):
    rot = _rotation(q)
    orientation = (*rot[:, 0], *rot[:, 1])  # row then column direction cosines (LPS)
    folder = tmp_path_factory.mktemp("affine")
    write_series(folder, np.zeros((4, 3, 3), np.int16), spacing=spacing, origin=origin, orientation=orientation)
    volume = load_study(folder).series[0].volume
    i, j, k = voxel
    lps = np.asarray(origin) + i * spacing[0] * rot[:, 0] + j * spacing[1] * rot[:, 1] + k * spacing[2] * rot[:, 2]
    world = volume.affine @ [i, j, k, 1.0]
    np.testing.assert_allclose(world[:3], LPS_TO_RAS @ lps, atol=1e-4)
    np.testing.assert_allclose(np.linalg.solve(volume.affine, world)[:3], voxel, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, spacing, rtol=1e-4)
