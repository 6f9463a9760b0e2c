"""Windowing and reformats: values, radiological orientation, aspect from spacing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.display import WINDOW_PRESETS, native_axial_index, percentile_window, reformat, window, window_for
from data.study import Volume

RAS_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def test_window_maps_the_range_to_8_bit():
    out = window(np.array([-1000, -160, 40, 240, 3000]), center=40, width=400)
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="width must be > 0"):
        window(np.zeros(3), 0, 0)


def test_presets_and_percentile():
    assert set(WINDOW_PRESETS) == {"lung", "mediastinum", "abdomen", "liver", "bone", "brain"}
    ct = Volume(np.full((4, 4, 4), 30, np.int16), RAS_AFFINE, modality="CT")
    assert window_for(ct, "lung") == (-600.0, 1500.0) and window_for(ct) == WINDOW_PRESETS["abdomen"]
    mr = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), RAS_AFFINE, modality="MR")
    centre, width = percentile_window(mr.array)
    assert centre == pytest.approx(499.5) and width == pytest.approx(979.02, rel=1e-3)
    assert window_for(mr) == pytest.approx((centre, width))
    with pytest.raises(ValueError, match="window preset must be one of"):
        window_for(mr, "sunset")


def _corner(affine, shape, signs) -> tuple[int, int, int]:
    """The corner voxel that lies furthest along RAS direction ``signs`` (e.g. (+1, +1, +1) = right-anterior-superior)."""
    corners = [(i, j, k) for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    return max(corners, key=lambda c: float(np.dot(signs, (affine @ [*c, 1.0])[:3])))


@pytest.mark.parametrize("affine", [
    np.diag([1.0, 1.0, 1.0, 1.0]),  # RAS
    np.diag([-0.7, -0.7, 2.5, 1.0]),  # DICOM axial (LPS) in RAS
    np.array([[0, 0, -1.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),  # a sagittal acquisition
])
def test_reformats_follow_radiological_convention(affine):
    shape = (6, 5, 4)
    array = np.zeros(shape, np.int16)
    array[_corner(affine, shape, (1, 1, 1))] = 1000  # right, anterior, superior
    array[_corner(affine, shape, (1, -1, 1))] = 500  # right, posterior, superior
    volume = Volume(array, affine)
    axial = reformat(volume, "axial", index=_n(volume, 2) - 1).image  # the top slice
    assert axial[0, 0] == 1000 and axial[-1, 0] == 500  # right on the viewer's left, anterior up
    coronal = reformat(volume, "coronal", index=_n(volume, 1) - 1).image  # the front slice
    assert coronal[0, 0] == 1000
    sagittal = reformat(volume, "sagittal", index=_n(volume, 0) - 1).image  # the right-most slice
    assert sagittal[0, 0] == 1000 and sagittal[0, -1] == 500  # anterior on the left, superior up


def _n(volume: Volume, ras_axis: int) -> int:
    """Number of slices along a RAS axis."""
    axis = int(np.argmax(np.abs(volume.affine[ras_axis, :3])))
    return volume.shape[axis]


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)),
       spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3), plane=st.sampled_from(["axial", "coronal", "sagittal"]))
def test_reformat_shape_and_aspect(shape, spacing, plane):
    volume = Volume(np.zeros(shape, np.float32), np.diag([*spacing, 1.0]))
    view = reformat(volume, plane)
    sx, sy, sz = spacing
    nx, ny, nz = shape
    expected_shape, expected_px = {"axial": ((ny, nx), (sy, sx)), "coronal": ((nz, nx), (sz, sx)),
                                   "sagittal": ((nz, ny), (sz, sy))}[plane]
    assert view.image.shape == expected_shape
    assert view.aspect == pytest.approx(expected_px[0] / expected_px[1])
    square = reformat(volume, plane, square_pixels=True)
    assert square.aspect == pytest.approx(1.0)
    target = min(expected_px)
    assert square.image.shape == tuple(int(round(n * p / target)) for n, p in zip(expected_shape, expected_px))


def test_2d_volume_gives_its_native_image():
    array = np.arange(12, dtype=np.int16).reshape(4, 3, 1)  # (I=4 columns, J=3 rows)
    view = reformat(Volume(array, np.diag([0.5, 0.25, 1.0, 1.0])), "coronal")
    assert view.plane == "native" and view.image.shape == (3, 4) and view.image[0, 1] == array[1, 0, 0]
    assert view.aspect == pytest.approx(0.5)


@pytest.mark.parametrize("z_step", [2.5, -2.5])
def test_the_axial_views_slice_maps_back_to_the_volumes_own_index(z_step):
    """Each slice k holds the value k: the axial view's slice i shows native slice ``native_axial_index(i)``,
    whichever way the volume's third axis runs."""
    array = np.broadcast_to(np.arange(6, dtype=np.float32), (4, 5, 6)).copy()
    vol = Volume(array, np.diag([1.0, 1.0, z_step, 1.0]), modality="CT")
    for i in range(6):
        k = native_axial_index(vol, i)
        assert np.all(reformat(vol, "axial", i).image == k)
    assert native_axial_index(vol, 0) == (0 if z_step > 0 else 5)
    coronal_stack = Volume(array, np.array([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]), modality="CT")
    assert native_axial_index(coronal_stack, 0) is None  # its third axis runs front to back: no native axial slice
