"""Compressed DICOM series (issue 22, item 2): each lossless transfer syntax clinical exports use,
encoded here from the series the other DICOM tests write, reads back to the same HU values as the
uncompressed series.

Decoders are the pylibjpeg plugins collapsekit depends on (openjpeg: JPEG 2000; libjpeg: JPEG-LS
and JPEG lossless; rle: RLE). Encoders: pydicom's ``Dataset.compress`` with pylibjpeg (JPEG 2000,
RLE) and pyjpegls (JPEG-LS, a dev dependency); pydicom has no encoder for JPEG lossless (process
14), so :func:`encode_jpeg_lossless_sv1` below writes one (ITU-T T.81 Annex H, predictor 1), and
the test checks it against libjpeg too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_dicom import ENCODINGS, phantom_volume, write_series

from collapsekit.data.dicom import read_series
from collapsekit.errors import DataError

SYNTAXES = {
    "jpeg2000-lossless": JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90
    "jpeg-ls-lossless": JPEGLSLossless,  # 1.2.840.10008.1.2.4.80
    "jpeg-lossless-sv1": JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70
    "rle-lossless": RLELossless,  # 1.2.840.10008.1.2.5
}


def encode_jpeg_lossless_sv1(img: np.ndarray, precision: int = 16) -> bytes:
    """Baseline lossless JPEG (ITU-T T.81 process 14, predictor 1 'SV1'), one component."""
    rows, cols = img.shape
    x = img.astype(np.int64) & ((1 << precision) - 1)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    out = bytearray()
    acc, nbits = 0, 0

    def put(value, n):
        nonlocal acc, nbits
        acc = (acc << n) | (value & ((1 << n) - 1))
        nbits += n
        while nbits >= 8:
            nbits -= 8
            b = (acc >> nbits) & 0xFF
            out.append(b)
            if b == 0xFF:
                out.append(0)
        acc &= (1 << nbits) - 1

    for d in diff.tolist():
        ssss = 16 if d == -32768 else abs(d).bit_length()
        put(ssss, 5)  # code of category ssss: 5-bit code = ssss (17 symbols of length 5)
        if 0 < ssss < 16:
            put(d if d > 0 else d - 1, ssss)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)

    def seg(marker, payload):
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    bits = [0] * 16
    bits[4] = 17
    dht = bytes([0x00]) + bytes(bits) + bytes(range(17))
    sof = (
        bytes([precision])
        + rows.to_bytes(2, "big")
        + cols.to_bytes(2, "big")
        + bytes([1, 1, 0x11, 0])
    )
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + seg(0xC4, dht) + seg(0xC3, sof) + seg(0xDA, sos) + bytes(out) + b"\xff\xd9"


def _compress(path: Path, syntax: str) -> None:
    ds = pydicom.dcmread(path)
    uid = SYNTAXES[syntax]
    if syntax == "jpeg-lossless-sv1":
        frame = encode_jpeg_lossless_sv1(ds.pixel_array)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = uid
    else:
        plugin = {"jpeg-ls-lossless": "pyjpegls"}.get(syntax, "pylibjpeg")
        ds.compress(uid, encoding_plugin=plugin)
    ds.save_as(path, enforce_file_format=True)


def test_lossless_jpeg_encoder_of_this_file_is_exact():
    """The hand-written JPEG lossless encoder against libjpeg's decoder, incl. both extremes."""
    libjpeg = pytest.importorskip("libjpeg")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, (17, 23)).astype(np.uint16)
    a[0, 0], a[1, 1], a[2, 2] = 0, 65535, 32768
    np.testing.assert_array_equal(libjpeg.decode(encode_jpeg_lossless_sv1(a)), a)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=["uint16", "int16"])
@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_compressed_series_reads_the_same_hu(tmp_path, syntax, encoding):
    assert get_decoder(SYNTAXES[syntax]).is_available, f"no decoder installed for {syntax}"
    vol = phantom_volume(size=64, slices=4)  # openjpeg needs >= 32 px for 6 levels
    plain = write_series(tmp_path / "plain", vol, encoding)
    shutil.copytree(tmp_path / "plain", tmp_path / "packed")
    for f in plain:
        _compress(tmp_path / "packed" / f.name, syntax)
    packed = sorted((tmp_path / "packed").iterdir())
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in packed} == {
        str(SYNTAXES[syntax])
    }
    assert all(
        f.stat().st_size < g.stat().st_size for f, g in zip(packed, sorted(plain), strict=True)
    )
    hu_plain, affine_plain = read_series(tmp_path / "plain")
    hu, affine = read_series(tmp_path / "packed")
    np.testing.assert_array_equal(hu, hu_plain)
    np.testing.assert_array_equal(affine, affine_plain)
    np.testing.assert_array_equal(hu, vol.astype(np.float32))


def test_missing_decoder_is_named(tmp_path, monkeypatch):
    """Without the plugin the error names the slice, the syntax and what to install."""
    vol = phantom_volume(size=64, slices=3)
    files = write_series(tmp_path / "ct", vol)
    for f in files:
        _compress(f, "jpeg2000-lossless")
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    with pytest.raises(
        DataError,
        match=r"JPEG 2000 Image Compression \(Lossless Only\) \(1.2.840.10008.1.2.4.90\) and no decoder is installed \(pylibjpeg - requires pylibjpeg-openjpeg\); pip install pylibjpeg",
    ) as err:
        read_series(tmp_path / "ct")
    assert "\n" not in str(err.value)
