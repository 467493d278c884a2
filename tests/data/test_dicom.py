"""DICOM series input: geometry and HU against the NIfTI path, discovery, cache keys, bad files.

Series are written here with pydicom from a phantom volume, in the geometry of the NIfTI affine
``A = [[-dc, 0, 0, ox], [0, -dr, 0, oy], [0, 0, dz, oz]]`` (RAS): in LPS that is the orientation
``(1, 0, 0, 0, 1, 0)``, pixel ``(r, c)`` of slice ``k`` is voxel ``V[c, r, k]``, at
``ImagePositionPatient = (-ox, -oy, oz + k dz)`` and ``PixelSpacing = (dr, dc)``. File names are
random and InstanceNumbers a permutation that is not the position order, so neither a sort by
name nor MONAI's sort by InstanceNumber gives the right volume.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import PydicomReader
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import (
    CaseRecord,
    LoadOptions,
    PreprocessConfig,
    check_dataset,
    clear_cache,
    discover,
    load_split,
    load_volumes,
    window,
)
from collapsekit.data.dicom import find_series, read_series, series_fingerprint
from collapsekit.data.phantom import generate_phantom
from collapsekit.errors import CollapsekitError, DataError

DR, DC, DZ = 0.7, 0.8, 2.5  # mm between rows, between columns, between slices
ORIGIN = (130.0, 95.5, -40.0)  # RAS (ox, oy, oz) of voxel (0, 0, 0)
AFFINE = np.array(
    [
        [-DC, 0.0, 0.0, ORIGIN[0]],
        [0.0, -DR, 0.0, ORIGIN[1]],
        [0.0, 0.0, DZ, ORIGIN[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
# (stored dtype, slope, intercept): HU = slope * stored + intercept
ENCODINGS = [(np.uint16, 0.5, -1024.0), (np.int16, 0.25, -500.0)]


def phantom_volume(size: int = 32, slices: int = 10, seed: int = 3) -> np.ndarray:
    """An int16 HU volume ``V`` stored as in the NIfTI of :data:`AFFINE` (x and y flipped)."""
    hu, _, _ = generate_phantom(seed, size, slices)
    return np.ascontiguousarray(hu[::-1, ::-1, :])


def _slice(
    pixels: np.ndarray, k: int, uid: str, study: str, dtype, slope: float, intercept: float
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
    ds.Modality = "CT"
    stored = np.rint((pixels.astype(np.float64) - intercept) / slope).astype(dtype)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if np.dtype(dtype).kind == "i" else 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing = [DR, DC]
    ds.SliceThickness = DZ
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-ORIGIN[0], -ORIGIN[1], ORIGIN[2] + k * DZ]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()
    return ds


def write_series(
    directory: Path,
    volume: np.ndarray,
    encoding=ENCODINGS[0],
    uid: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` (``V[x, y, z]`` of :data:`AFFINE`) as a CT series; files in position order."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n = volume.shape[2]
    numbers = list(range(1, n + 1))
    while numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True):
        rng.shuffle(numbers)
    names = [f"{rng.getrandbits(40):010x}.dcm" for _ in range(n)]
    uid, study = uid or generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        ds = _slice(volume[:, :, k].T, k, uid, study, *encoding)
        ds.InstanceNumber = numbers[k]
        ds.save_as(directory / names[k], enforce_file_format=True)
        paths.append(directory / names[k])
    return paths


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# --- geometry and intensity -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS, ids=["uint16", "int16"])
def test_series_reads_back_hu_and_world_coordinates(tmp_path, encoding):
    vol = phantom_volume()
    files = write_series(tmp_path / "ct", vol, encoding)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    # the test means something: neither file names nor InstanceNumbers follow position
    assert sorted(files) != files and sorted(files) != files[::-1]
    by_number = sorted(range(len(files)), key=lambda i: int(headers[i].InstanceNumber))
    assert by_number != list(range(len(files))) and by_number != list(range(len(files)))[::-1]
    assert int(headers[0].PixelRepresentation) == (encoding[0] == np.int16)

    hu, affine = read_series(tmp_path / "ct")
    assert hu.dtype == np.float32 and hu.shape == vol.shape
    np.testing.assert_array_equal(hu, vol.astype(np.float32))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-9)
    # a voxel's world position equals the DICOM position of its pixel (converted LPS -> RAS)
    k, r, c = 7, 3, 5
    lps = np.asarray(headers[k].ImagePositionPatient, float) + np.array([c * DC, r * DR, 0.0])
    np.testing.assert_allclose(affine @ [c, r, k, 1], [-lps[0], -lps[1], lps[2], 1.0], atol=1e-9)


def test_monai_reader_alone_stacks_by_instance_number(tmp_path):
    """The pitfall read_series guards against: MONAI 1.6's PydicomReader orders by InstanceNumber."""
    vol = phantom_volume()
    write_series(tmp_path / "ct", vol)
    reader = PydicomReader()
    array, meta = reader.get_data(reader.read(str(tmp_path / "ct")))
    assert not np.array_equal(np.asarray(array, np.float32), vol.astype(np.float32))
    assert abs(meta["affine"][2, 2] - DZ) > 0.1


def _folder_pair(tmp_path: Path, volume: np.ndarray) -> tuple[Path, Path]:
    write_series(tmp_path / "dicom" / "patient1" / "ct", volume)
    nii = tmp_path / "nifti" / "patient1.nii.gz"
    nii.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, AFFINE), str(nii))
    return tmp_path / "dicom", tmp_path / "nifti"


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(a_min=-1024.0, a_max=3071.0),  # the window is invertible: HU compared
        PreprocessConfig(),
        PreprocessConfig(pixdim=(1.5, 1.2), in_plane_size=24),
    ],
    ids=["hu", "default", "resampled"],
)
def test_dicom_and_nifti_preprocess_to_the_same_volume(tmp_path, cfg):
    vol = phantom_volume()
    dicom_root, nifti_root = _folder_pair(tmp_path, vol)
    d = load_split("folder", dicom_root, "training", preprocess=cfg)
    n = load_split("folder", nifti_root, "training", preprocess=cfg)
    assert [v.case_id for v in d] == ["patient1/ct"] and [v.case_id for v in n] == ["patient1"]
    dv, nv = d[0], n[0]
    assert dv.image.shape == nv.image.shape
    np.testing.assert_allclose(dv.image, nv.image, atol=1e-6)
    np.testing.assert_allclose(dv.affine, nv.affine, atol=1e-6)
    np.testing.assert_allclose(dv.source_affine, nv.source_affine, atol=1e-9)
    np.testing.assert_array_equal(dv.slices, nv.slices)
    assert dv.source_path == dicom_root / "patient1" / "ct"
    if cfg.pixdim is None:
        # RAS: the phantom's own array again, and HU back through the window when it is invertible
        np.testing.assert_allclose(np.diag(dv.affine)[:3], [DC, DR, DZ], atol=1e-9)
        if cfg.a_min == -1024.0:
            hu, _, _ = generate_phantom(3, 32, 10)
            np.testing.assert_allclose(dv.image * 4095.0 - 1024.0, hu, atol=2e-3)


# --- discovery --------------------------------------------------------------------------------


def test_folder_discovers_series_beside_nifti(tmp_path, nifti, ct):
    vol = phantom_volume(size=16, slices=4)
    nifti(tmp_path / "a.nii.gz", ct(0))
    write_series(tmp_path / "b" / "ct", vol)
    # two series in one directory, told apart by SeriesInstanceUID
    write_series(tmp_path / "shared", vol, uid="1.2.3.4", seed=1)
    write_series(tmp_path / "shared", vol[:, :, :3], uid="1.2.3.5", seed=2)
    (tmp_path / "shared" / "README.txt").write_text("not DICOM")
    index = discover("folder", tmp_path)
    ids = [r.case_id for r in index.training]
    assert ids == ["a", "b/ct", "shared/1.2.3.4", "shared/1.2.3.5"]
    assert [r.series_uid is not None for r in index.training] == [False, True, True, True]
    assert index.training[2].image == tmp_path / "shared"
    vols = load_volumes(index.training)
    assert [v.image.shape[2] for v in vols] == [4, 4, 4, 3]
    np.testing.assert_allclose(vols[2].image, vols[1].image)


def test_series_files_in_position_order(tmp_path):
    files = write_series(tmp_path / "ct", phantom_volume(size=16, slices=6))
    (series,) = find_series(tmp_path)
    assert series.files == tuple(files)
    assert series.shape == (16, 16) and series.pixel_spacing == (DR, DC)
    assert series.slice_spacing == pytest.approx(DZ)


# --- cache key --------------------------------------------------------------------------------


def test_cache_key_covers_every_file_of_the_series(tmp_path):
    vol = phantom_volume(size=16, slices=5)
    files = write_series(tmp_path / "ct", vol)
    rec = discover("folder", tmp_path).training
    cache = tmp_path.parent / f"{tmp_path.name}-cache"
    first = load_volumes(rec, options=LoadOptions(cache_dir=cache))[0]
    fp = series_fingerprint(tmp_path / "ct")
    assert [name for name, *_ in fp] == sorted(f.name for f in files)
    assert all(len(entry) == 5 for entry in fp)  # name, size, mtime_ns, ctime_ns, inode

    # rewrite one slice in place (same name and size, new pixels): the cached volume is not reused
    ds = pydicom.dcmread(files[2])
    ds.RescaleIntercept = -1000.0  # +24 HU on that slice only
    before = files[2].stat().st_mtime_ns
    ds.save_as(files[2])
    # File times tick coarsely (a few ms): an edit this soon after writing may keep the mtime, which
    # no real edit does; date it 1 s later, as a later edit would be.
    os.utime(files[2], ns=(before + 10**9, before + 10**9))
    clear_cache()
    seen: list = []
    again = load_volumes(rec, options=LoadOptions(cache_dir=cache), progress=seen.append)[0]
    assert [e.info["cached"] for e in seen if hasattr(e, "info") and "cached" in e.info] == [False]
    ras = vol[::-1, ::-1, 2].astype(np.float64)  # the preprocessed volume is RAS
    np.testing.assert_allclose(
        again.image[:, :, 2], window(ras + 24), atol=2**-12
    )  # the disk cache is float16
    np.testing.assert_allclose(first.image[:, :, 2], window(ras), atol=2**-12)
    assert series_fingerprint(tmp_path / "ct") != fp
    # removing a slice changes the key too (and the volume)
    files[-1].unlink()
    clear_cache()
    shorter = load_volumes(
        discover("folder", tmp_path).training, options=LoadOptions(cache_dir=cache)
    )[0]
    assert shorter.image.shape[2] == 4


# --- bad DICOM --------------------------------------------------------------------------------


def _truncate_pixels(files: list[Path]) -> Path:
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 300])
    return files[3]


def _truncate_header(files: list[Path]) -> Path:
    files[3].write_bytes(files[3].read_bytes()[:200])
    return files[3]


def _structured_report(files: list[Path]) -> Path:
    ref = pydicom.dcmread(files[0], stop_before_pixels=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = ref.SeriesInstanceUID, ref.StudyInstanceUID
    ds.Modality = "SR"
    path = files[0].parent / "dose_report.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _mixed_sizes(files: list[Path]) -> Path:
    ds = pydicom.dcmread(files[4])
    small = ds.pixel_array[:8, :12].copy()
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    ds.save_as(files[4])
    return files[4]


def _no_pixel_spacing(files: list[Path]) -> Path:
    ds = pydicom.dcmread(files[1])
    del ds.PixelSpacing
    ds.save_as(files[1])
    return files[1]


BAD = {
    "truncated pixels": (_truncate_pixels, "truncated or corrupt"),
    "truncated header": (_truncate_header, "truncated or corrupt"),
    "structured report": (_structured_report, "Basic Text SR Storage"),
    "mixed sizes": (_mixed_sizes, "8x12 pixels"),
    "no pixel spacing": (_no_pixel_spacing, "PixelSpacing"),
}


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, Path]:
    root = tmp_path / "data"
    root.mkdir()
    write_series(root / "good", phantom_volume(size=16, slices=6), seed=5)
    files = write_series(root / "bad", phantom_volume(size=16, slices=6))
    return root, BAD[case][0](files)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dicom_raises_one_error_naming_the_file(tmp_path, case):
    root, culprit = _bad_folder(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_split("folder", root, "training")
    msg = str(err.value)
    assert str(culprit) in msg and "\n" not in msg and BAD[case][1] in msg


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dicom_cli_exit_2_and_nothing_written(tmp_path, case):
    root, culprit = _bad_folder(tmp_path, case)
    before = snapshot(tmp_path)
    data = ["--dataset", "folder", "--data-dir", str(root)]
    for args in (
        ["data", "check", "--dataset", "folder", "--data-dir", str(root), "--json"],
        ["spectrum", "random:resnet18", *data, "--out", str(tmp_path / "spec"), "--quiet"],
        ["similarity", "random:resnet18", *data, "--out", str(tmp_path / "sim"), "--quiet"],
        ["train", *data, "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert culprit.name in lines[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "edit,needle",
    [
        ("drop_middle", "not evenly spaced"),
        ("duplicate", "same position"),
        ("single", "single slice"),
    ],
)
def test_series_geometry_problems(tmp_path, edit, needle):
    files = write_series(tmp_path / "ct", phantom_volume(size=16, slices=6))
    if edit == "drop_middle":
        files[2].unlink()
    elif edit == "duplicate":
        ds = pydicom.dcmread(files[3])
        ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
        ds.save_as(files[3])
    else:
        for f in files[1:]:
            f.unlink()
    with pytest.raises(DataError, match=needle):
        discover("folder", tmp_path)


def test_rounded_slice_positions_are_accepted(tmp_path):
    """Positions written to 0.01 mm: gaps differ by a few hundredths, the series still reads."""
    vol = phantom_volume(size=16, slices=6)
    files = write_series(tmp_path / "ct", vol)
    for k, jitter in ((1, 0.004), (3, -0.005), (4, 0.006)):
        ds = pydicom.dcmread(files[k])
        ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], ORIGIN[2] + k * DZ + jitter]
        ds.save_as(files[k])
    hu, affine = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(hu, vol.astype(np.float32))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-9)  # from the first and last positions


def test_dicomdir_and_other_files_are_ignored(tmp_path):
    files = write_series(tmp_path / "ct", phantom_volume(size=16, slices=4))
    (tmp_path / "ct" / "notes.csv").write_text("a,b\n1,2\n")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(tmp_path / "ct" / "DICOMDIR", enforce_file_format=True)
    (series,) = find_series(tmp_path)
    assert series.files == tuple(files)


# --- data check -------------------------------------------------------------------------------


def test_data_check_json_reports_dicom(tmp_path, nifti, ct):
    write_series(tmp_path / "s1", phantom_volume(size=16, slices=6))
    write_series(tmp_path / "s2" / "ct", phantom_volume(size=16, slices=4, seed=4), seed=9)
    nifti(tmp_path / "vol.nii.gz", ct(0, (16, 16, 5)))
    result = CliRunner().invoke(
        app, ["data", "check", "--dataset", "folder", "--data-dir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dicom"] == {
        "series": 2,
        "slices": 10,
        "spacing": {"min": [DC, DR, DZ], "max": [DC, DR, DZ]},
    }
    assert report["volumes"] == {"training": 3, "validation": 0, "test": 0}
    assert report["shape"] == {"min": [16, 16, 4], "max": [16, 16, 6]}
    assert report["spacing"]["max"] == [1.0, 1.0, DZ]  # the NIfTI file has a unit affine
    assert check_dataset("folder", tmp_path)["dicom"] == report["dicom"]
    text = CliRunner().invoke(
        app, ["data", "check", "--dataset", "folder", "--data-dir", str(tmp_path), "-q"]
    )
    assert "DICOM: 2 series, 10 slices, spacing (mm) [0.8, 0.7, 2.5] .. [0.8, 0.7, 2.5]" in (
        text.output
    )


def test_nifti_only_check_reports_no_series(tmp_path, nifti, ct):
    nifti(tmp_path / "v.nii.gz", ct(0))
    assert check_dataset("folder", tmp_path)["dicom"] == {
        "series": 0,
        "slices": 0,
        "spacing": None,
    }


# --- robustness: any damage to one slice is one CollapsekitError line --------------------------


def _valid_slice_bytes() -> tuple[list[bytes], bytes]:
    tmp = Path(tempfile.mkdtemp(prefix="ck-dicom-fuzz-"))
    files = write_series(tmp / "ct", phantom_volume(size=8, slices=3))
    return [f.read_bytes() for f in files[1:]], files[0].read_bytes()


_OTHERS, _VALID = _valid_slice_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the mangled values
@settings(
    max_examples=100,
    derandomize=True,  # the same 100 damaged slices in every CI run (a 1,500-example run was clean)
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    cut=st.integers(0, len(_VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
)
def test_damaged_slice_gives_only_own_errors(tmp_path_factory, cut, flips):
    d = tmp_path_factory.mktemp("fz") / "ct"
    d.mkdir()
    for i, b in enumerate(_OTHERS):
        (d / f"other{i}.dcm").write_bytes(b)
    data = bytearray(_VALID)
    for i, v in flips:
        data[i] = v
    (d / "damaged.dcm").write_bytes(bytes(data[:cut]) if cut < len(data) else bytes(data))
    clear_cache()
    try:
        load_volumes(discover("folder", d.parent).training)
    except CollapsekitError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), repr(msg)


def test_read_series_record_without_uid(tmp_path):
    vol = phantom_volume(size=16, slices=4)
    write_series(tmp_path / "ct", vol)
    (v,) = load_volumes([CaseRecord("ct", tmp_path / "ct")])
    assert v.image.shape == (16, 16, 4)
    write_series(tmp_path / "ct", vol, seed=3)  # a second series in the same directory
    clear_cache()
    with pytest.raises(DataError, match="holds 2 DICOM series"):
        load_volumes([CaseRecord("ct", tmp_path / "ct")])


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_spectrum_on_a_dicom_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(2):
        write_series(data / f"patient{i}" / "ct", phantom_volume(64, 12, seed=i), seed=i)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    source = ["--dataset", "folder", "--data-dir", str(data)]
    # no final spectrum on the 48-case evaluation phantom: the spectrum command below measures
    (tmp_path / "cfg.toml").write_text("final_samples = 0\n")
    train = runner.invoke(
        app,
        ["train", *source, "--budget", "demo", "--steps", "2", "--batch-size", "4"]
        + ["--image-size", "32", "--workers", "0", "--out", "run", "--quiet"]
        + ["--config", "cfg.toml"],
    )
    assert train.exit_code == 0, train.output
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and np.isfinite(metrics[-1]["loss"])
    assert 'dataset = "folder"' in (tmp_path / "run" / "config.toml").read_text()
    spec = runner.invoke(
        app, ["spectrum", "run", *source, "--samples", "16", "--out", "spec", "--json"]
    )
    assert spec.exit_code == 0, spec.output
    (result,) = json.loads(spec.output)["results"]
    assert result["n"] == 16 and result["d"] == 512
    assert (tmp_path / "spec" / "spectrum.json").is_file()


# --- issue 22: blank UIDs, modality, rescale tags ---------------------------------------------


def _edit(files: list[Path], fn) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def _blank_uid(ds: Dataset) -> None:
    ds.SeriesInstanceUID = ""


def _no_uid(ds: Dataset) -> None:
    del ds.SeriesInstanceUID


@pytest.mark.parametrize("edit", [_blank_uid, _no_uid], ids=["blank", "absent"])
def test_series_with_blank_uid_is_read_as_one_series(tmp_path, edit):
    """An anonymised series (SeriesInstanceUID present but empty, or absent) in a directory of
    its own reads as one series, HU equal to the original, and data check says so."""
    vol = phantom_volume(size=16, slices=5)
    files = write_series(tmp_path / "ct", vol)
    _edit(files, edit)
    (series,) = find_series(tmp_path)
    assert series.uid == "" and series.files == tuple(files)
    assert any("blank SeriesInstanceUID" in n and "read as one series" in n for n in series.notes)
    index = discover("folder", tmp_path)
    (rec,) = index.training
    assert rec.case_id == "ct" and rec.series_uid == ""
    hu, affine = read_series(tmp_path / "ct", "")
    np.testing.assert_array_equal(hu, vol.astype(np.float32))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-9)
    report = check_dataset("folder", tmp_path)
    assert report["dicom"]["series"] == 1 and report["dicom"]["slices"] == 5
    assert any("blank SeriesInstanceUID" in w for w in report["warnings"])
    result = CliRunner().invoke(
        app, ["data", "check", "--dataset", "folder", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps the long line (tmp paths vary in length)
    assert "warning: " in text and "read as one series" in text


@pytest.mark.parametrize(
    "second,needle",
    [
        ("other_size", r"is 12x12 pixels but .* \(\(blank SeriesInstanceUID\)\) is 16x16"),
        ("same_positions", r"of series \(blank SeriesInstanceUID\) lie at the same position"),
        ("named_beside", r"have a blank SeriesInstanceUID beside series 1\.2\.3\.4"),
    ],
)
def test_blank_uids_that_would_mix_series_are_refused(tmp_path, second, needle):
    files = write_series(tmp_path / "ct", phantom_volume(size=16, slices=4))
    _edit(files, _blank_uid)
    if second == "other_size":
        more = write_series(tmp_path / "ct", phantom_volume(size=12, slices=4), seed=5)
        _edit(more, _blank_uid)
    elif second == "same_positions":  # a second acquisition over the same range, same size
        more = write_series(tmp_path / "ct", phantom_volume(size=16, slices=4, seed=8), seed=5)
        _edit(more, _blank_uid)
    else:
        write_series(tmp_path / "ct", phantom_volume(size=16, slices=4), uid="1.2.3.4", seed=5)
    with pytest.raises(DataError, match=needle) as err:
        discover("folder", tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("modality", ["MR", None], ids=["MR", "absent"])
def test_non_ct_series_is_refused_unless_allowed(tmp_path, modality):
    vol = phantom_volume(size=16, slices=4)
    files = write_series(tmp_path / "mr", vol)

    def set_modality(ds: Dataset) -> None:
        if modality is None:
            del ds.Modality
        else:
            ds.Modality = modality

    _edit(files, set_modality)
    what = f"Modality {modality}" if modality else "no Modality"
    with pytest.raises(DataError, match=f"has {what}, not CT: its values are not Hounsfield"):
        discover("folder", tmp_path)
    result = CliRunner().invoke(
        app, ["data", "check", "--dataset", "folder", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "not CT" in result.output and "Traceback" not in result.output
    (rec,) = discover("folder", tmp_path, allow_non_ct=True).training
    (v,) = load_volumes([rec])
    assert v.image.shape == (16, 16, 4)


def test_missing_rescale_tags_are_noted(tmp_path):
    """Stored values are then taken as HU (what MONAI does), and data check says so."""
    vol = phantom_volume(size=16, slices=4)
    files = write_series(tmp_path / "ct", vol, encoding=(np.int16, 1.0, 0.0))

    def drop(ds: Dataset) -> None:
        del ds.RescaleSlope, ds.RescaleIntercept

    _edit(files[:2], drop)
    hu, _ = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(hu, vol.astype(np.float32))
    report = check_dataset("folder", tmp_path)
    (note,) = report["warnings"]
    assert "2 of 4 slices" in note and "no RescaleSlope/RescaleIntercept" in note
    assert "taken as HU" in note
