"""Preprocessing: HU window values, RAS orientation, resampling, slice selection, bad inputs."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from collapsekit.data import (
    CaseRecord,
    PreprocessConfig,
    load_volumes,
    radiological_view,
    window,
)
from collapsekit.data.loading import voxel_spacing
from collapsekit.errors import ConfigError, DataError


def _load(path, label=None, cfg=PreprocessConfig()):
    return load_volumes([CaseRecord(path.name, path, label)], cfg)[0]


def test_window_closed_form():
    hu = np.array([-1000.0, -175.0, 37.5, 250.0, 1000.0])
    np.testing.assert_allclose(window(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window(np.array([-100.0, 0.0, 50.0]), -100, 100), [0.0, 0.5, 0.75])


def test_window_values_through_loader(tmp_path, nifti):
    vol = np.full((4, 4, 3), 0.0, dtype=np.float32)
    vol[0, 0, :], vol[1, 0, :], vol[2, 0, :], vol[3, 0, :] = -1000, -175, 37.5, 250
    vol[0, 1, :], vol[1, 1, :] = 1000, -47.5  # -47.5 -> 0.3
    v = _load(nifti(tmp_path / "w.nii.gz", vol))
    np.testing.assert_allclose(v.image[:, 0, 0], [0.0, 0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(v.image[:2, 1, 0], [1.0, 0.3], atol=1e-6)
    np.testing.assert_allclose(v.image[:, :, 1], window(vol[:, :, 1]), atol=1e-6)
    assert v.image.dtype == np.float32 and not v.image.flags.writeable
    custom = _load(tmp_path / "w.nii.gz", cfg=PreprocessConfig(a_min=-1000, a_max=1000))
    np.testing.assert_allclose(custom.image[:, 0, 0], [0.0, 0.4125, 0.51875, 0.625], atol=1e-6)


def test_orientation_to_ras(tmp_path, nifti, ct):
    """An LPS-stored file (like many BTCV volumes) loads to the same RAS array as a RAS file."""
    ras = ct(1, (6, 5, 3))
    lab = (ras > 100).astype(np.uint8)
    aff_ras = np.diag([0.8, 0.7, 2.5, 1.0])
    aff_ras[:3, 3] = [-10.0, -20.0, 5.0]
    # Same voxels stored with axes 0 and 1 reversed: world = aff_lps @ index.
    aff_lps = aff_ras.copy()
    aff_lps[0, 0], aff_lps[1, 1] = -0.8, -0.7
    aff_lps[0, 3] = -10.0 + 0.8 * 5
    aff_lps[1, 3] = -20.0 + 0.7 * 4
    a = _load(nifti(tmp_path / "ras.nii.gz", ras), nifti(tmp_path / "ras_l.nii.gz", lab, aff_ras))
    b = _load(
        nifti(tmp_path / "lps.nii.gz", ras[::-1, ::-1].copy(), aff_lps),
        nifti(tmp_path / "lps_l.nii.gz", lab[::-1, ::-1].copy(), aff_lps),
    )
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(b.affine, aff_ras)
    np.testing.assert_allclose(b.source_affine, aff_lps)
    np.testing.assert_allclose(voxel_spacing(b.affine), [0.8, 0.7, 2.5])


def test_radiological_view():
    s = np.zeros((4, 3))
    s[3, 2] = 1  # most Right (x index H-1), most Anterior (y index W-1)
    s[0, 0] = 2  # most Left, most Posterior
    d = radiological_view(s)
    assert d.shape == (3, 4)
    assert d[0, 0] == 1 and d[-1, -1] == 2  # anterior-right at the top-left of the screen


def test_slice_selection(tmp_path, nifti):
    vol = np.full((10, 10, 5), -1000, dtype=np.int16)
    vol[2:8, 2:8, 1] = 40  # 36% body
    vol[4:6, 4:6, 2] = 40  # 4% body: below the default 5%
    vol[0:5, :, 3] = -400  # 50% above the -500 HU body threshold
    v = _load(nifti(tmp_path / "s.nii.gz", vol))
    np.testing.assert_array_equal(v.slices, [1, 3])
    assert v.slices.dtype == np.int64
    v = _load(tmp_path / "s.nii.gz", cfg=PreprocessConfig(min_body_fraction=0.0))
    np.testing.assert_array_equal(v.slices, [0, 1, 2, 3, 4])
    v = _load(tmp_path / "s.nii.gz", cfg=PreprocessConfig(min_body_fraction=0.4))
    np.testing.assert_array_equal(v.slices, [3])


def test_in_plane_resize_and_spacing(tmp_path, nifti, ct):
    img = ct(2, (16, 16, 3))
    lab = np.zeros((16, 16, 3), dtype=np.uint8)
    lab[4:12, 4:12, :] = 6
    lab[6:8, 6:8, :] = 11
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    ip, lp = nifti(tmp_path / "i.nii.gz", img, aff), nifti(tmp_path / "l.nii.gz", lab, aff)
    v = _load(ip, lp, PreprocessConfig(in_plane_size=8))
    assert v.image.shape == v.label.shape == (8, 8, 3)
    np.testing.assert_allclose(voxel_spacing(v.affine), [2.0, 2.0, 3.0])
    # nearest-exact on a factor-2 shrink samples source pixel 2i+1
    np.testing.assert_array_equal(v.label, lab[1::2, 1::2, :])
    v = _load(ip, lp, PreprocessConfig(pixdim=(0.5, 2.0)))
    assert v.image.shape[2] == 3 and v.label.shape == v.image.shape
    np.testing.assert_allclose(voxel_spacing(v.affine), [0.5, 2.0, 3.0])
    assert set(np.unique(v.label)) == {0, 6, 11}


def test_config_validation():
    with pytest.raises(ConfigError, match="a_max > a_min"):
        PreprocessConfig(a_min=10, a_max=10)
    with pytest.raises(ConfigError, match="pixdim"):
        PreprocessConfig(pixdim=(1.0, -1.0))
    assert PreprocessConfig(pixdim=[1, 2]).pixdim == (1.0, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_body_fraction"):
        PreprocessConfig(min_body_fraction=1.0)


# --- bad inputs: each raises DataError naming the file ------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(
        DataError, match=f"image file {tmp_path / 'gone.nii.gz'} of case gone.nii.gz does not exist"
    ):
        _load(tmp_path / "gone.nii.gz")


def test_truncated_file(tmp_path, nifti, ct):
    p = nifti(tmp_path / "t.nii.gz", ct(0, (16, 16, 8)))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=f"cannot read {p}: not a readable NIfTI"):
        _load(p)
    q = tmp_path / "garbage.nii.gz"
    q.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DataError, match=f"cannot read {q}"):
        _load(q)


def test_shape_mismatch(tmp_path, nifti, ct):
    ip = nifti(tmp_path / "i.nii.gz", ct(0, (8, 8, 4)))
    lp = nifti(tmp_path / "l.nii.gz", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        DataError, match=rf"label {lp} has shape \(8, 8, 3\) but image {ip} has shape \(8, 8, 4\)"
    ):
        _load(ip, lp)


def test_2d_and_4d(tmp_path, nifti):
    p2 = nifti(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.int16))
    with pytest.raises(DataError, match=rf"{p2} is a 2D volume of shape \(8, 8\)"):
        _load(p2)
    p4 = nifti(tmp_path / "time.nii.gz", np.zeros((8, 8, 4, 2), np.int16))
    with pytest.raises(DataError, match=rf"{p4} is a 4D volume of shape \(8, 8, 4, 2\)"):
        _load(p4)
    ok = nifti(tmp_path / "single.nii.gz", np.zeros((8, 8, 4, 1), np.int16))
    assert _load(ok).image.shape == (8, 8, 4)


def test_non_integer_label(tmp_path, nifti, ct):
    ip = nifti(tmp_path / "i.nii.gz", ct(0, (8, 8, 4)))
    lab = np.zeros((8, 8, 4), np.float32)
    lab[2, 2, 1] = 0.5
    lp = nifti(tmp_path / "l.nii.gz", lab)
    with pytest.raises(DataError, match=rf"{lp} is not an integer label map \(e.g. value 0.5\)"):
        _load(ip, lp)
    lab[2, 2, 1] = 3.0  # integer values stored as float are fine
    nifti(lp, lab)
    v = _load(ip, lp)
    assert v.label.dtype == np.uint8 and v.label[2, 2, 1] == 3


def test_nan_image(tmp_path, nifti):
    vol = np.zeros((4, 4, 2), np.float32)
    vol[1, 1, 1] = np.nan
    p = nifti(tmp_path / "nan.nii.gz", vol)
    with pytest.raises(DataError, match=f"{p} contains NaN"):
        _load(p)


def test_window_equals_monai_scale_intensity_range_bit_for_bit() -> None:
    """The loader windows with MONAI's operations in float32 (no MetaTensor, no C-order copy):
    the same values as ``ScaleIntensityRange(clip=True)``, into a Fortran-ordered array."""
    from monai.transforms import ScaleIntensityRange

    from collapsekit.data.preprocess import _window_blocks

    def _window_fortran(hu, a_min, a_max):
        return _window_blocks(hu, PreprocessConfig(a_min=a_min, a_max=a_max))[0]

    rng = np.random.default_rng(0)
    hu = np.asfortranarray(rng.uniform(-1200, 1500, size=(33, 17, 9)).astype(np.float32))
    hu.flat[:5] = [-175.0, 250.0, 37.5, -3000.0, 3000.0]
    for a_min, a_max in ((-175.0, 250.0), (-1000.0, 1000.0), (40.0, 41.0)):
        ref = ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)(hu).numpy()
        got = _window_fortran(hu, a_min, a_max)
        assert got.dtype == np.float32 and got.flags.f_contiguous
        np.testing.assert_array_equal(got, ref)
    assert _window_fortran(np.asfortranarray(hu.astype(np.int16)), -175, 250).flags.f_contiguous


def _reference_chain(path, cfg=PreprocessConfig()):
    """The chain as MONAI's transforms run it on the float32 volume, whole: the reference the
    loader's native-dtype, block-wise path must equal bit for bit."""
    import torch
    from monai.data import MetaTensor, NibabelReader
    from monai.transforms import EnsureChannelFirst, Orientation, ScaleIntensityRange

    reader = NibabelReader()
    data, meta = reader.get_data(reader.read(str(path)))
    x = MetaTensor(torch.as_tensor(np.asarray(data, np.float32)), affine=meta["affine"])
    x = EnsureChannelFirst(channel_dim="no_channel")(x)
    x = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(x)
    hu = x[0].numpy()
    body = (hu > cfg.body_threshold_hu).mean(axis=(0, 1))
    img = ScaleIntensityRange(cfg.a_min, cfg.a_max, 0.0, 1.0, clip=True)(x)[0].numpy()
    return img, np.nonzero(body >= cfg.min_body_fraction)[0]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("flip", [False, True])
def test_native_dtype_blockwise_path_equals_monai_float32_chain(tmp_path, nifti, dtype, flip):
    """Whatever the file's dtype (kept through Orientation, cast a block at a time) and however it
    is stored (a flipped LPS file), the image and the slices equal MONAI's float32 chain exactly;
    float16 (the disk cache's dtype) is that image rounded to nearest."""
    from collapsekit.data.preprocess import preprocess_record

    rng = np.random.default_rng(3)
    hi = 250 if dtype == np.uint8 else 1500
    lo = 0 if dtype == np.uint8 else -1200
    vol = rng.integers(lo, hi, size=(23, 19, 11)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        vol = vol + rng.uniform(0, 1, size=vol.shape).astype(dtype)  # fractional HU
    vol[:, :, 4] = lo  # an empty slice: left out (but for uint8, whose 0 HU is body)
    aff = np.diag([0.8, 0.7, 2.5, 1.0])
    if flip:
        aff[0, 0], aff[1, 1] = -0.8, -0.7
    path = nifti(tmp_path / "v.nii.gz", vol, aff)
    ref, ref_slices = _reference_chain(path)
    rec = CaseRecord("v", path)
    got = preprocess_record(rec, PreprocessConfig())
    assert got.image.dtype == np.float32 and got.image.flags.f_contiguous
    np.testing.assert_array_equal(got.image, ref)
    np.testing.assert_array_equal(got.slices, ref_slices)
    assert (4 in got.slices) == (dtype == np.uint8)
    half = preprocess_record(rec, PreprocessConfig(), image_dtype=np.float16)
    assert half.image.dtype == np.float16 and half.image.flags.f_contiguous
    np.testing.assert_array_equal(half.image, ref.astype(np.float16))
    np.testing.assert_array_equal(half.slices, ref_slices)


def test_window_blocks_span_slices_and_uneven_ends(monkeypatch):
    """Blocks of several slices (small images) and a last, shorter block: the same image and body
    fractions as the whole-volume computation."""
    import collapsekit.data.preprocess as pp

    rng = np.random.default_rng(1)
    hu = np.asfortranarray(rng.integers(-1100, 1400, size=(6, 5, 13)).astype(np.int16))
    cfg = PreprocessConfig()
    whole = np.clip((hu.astype(np.float32) - np.float32(-175)) / np.float32(425), 0, 1)
    for block in (30, 60, 1 << 18):  # 1 slice, 2 slices (13 = 6*2 + 1), the whole volume
        monkeypatch.setattr(pp, "_BLOCK_ELEMENTS", block)
        img, body = pp._window_blocks(hu, cfg)
        np.testing.assert_array_equal(img, whole)
        np.testing.assert_array_equal(body, (hu > -500).mean(axis=(0, 1)))
    with pytest.raises(ConfigError, match="float32 or float16"):
        pp._window_blocks(hu, cfg, np.float64)
    empty, body = pp._window_blocks(np.zeros((4, 4, 0), np.int16), cfg)
    assert empty.shape == (4, 4, 0) and body.shape == (0,)


def test_float16_cast_through_torch_rounds_as_numpy():
    """``cast_into``'s torch float32 -> float16 equals numpy's ``astype`` (round to nearest, ties to
    even), subnormals and exact ties included."""
    from collapsekit.data.preprocess import cast_into

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(0, 1, 200_000),
            np.linspace(0, 1, 100_001),
            rng.uniform(0, 1e-4, 10_000),  # float16 subnormals below 6.1e-5
            [2.0**-25, 2.0**-24, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 0.5 + 2.0**-12],  # ties
        ]
    ).astype(np.float32)
    x = np.asfortranarray(x.reshape(-1, 1, 1).repeat(2, axis=2))
    out = np.empty(x.shape, np.float16, order="F")
    cast_into(out, x)
    np.testing.assert_array_equal(out.view(np.uint16), x.astype(np.float16).view(np.uint16))
