"""One phantom case: the anatomy painted region by region, then scanned."""

from __future__ import annotations

import numpy as np

from collapsekit.data.phantom._anatomy import (
    ShapeSampler,
    paint_adrenals,
    paint_back_muscles,
    paint_body_wall,
    paint_bowel,
    paint_gallbladder,
    paint_great_vessels,
    paint_kidneys,
    paint_liver,
    paint_oesophagus,
    paint_pancreas,
    paint_portal_veins,
    paint_rectus,
    paint_ribs,
    paint_spleen,
    paint_stomach,
    paint_vertebra,
    place_spine,
)
from collapsekit.data.phantom._canvas import Canvas, scan
from collapsekit.errors import ConfigError

__all__ = ["generate_phantom"]


def generate_phantom(
    seed: int, size: int = 128, slices: int = 48
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom abdominal CT case.

    Args:
        seed: case seed; the same seed gives the same case (numpy ``default_rng``).
        size: in-plane size ``H = W`` (>= 8); the field of view is 400 mm.
        slices: number of axial slices ``Z`` (>= 1) spanning 150 mm (inferior to superior).

    Returns:
        ``(image, label, affine)``: ``image`` int16 ``(H, W, Z)`` in HU (air -1000, clipped to
        [-1024, 3071]); ``label`` uint8 ``(H, W, Z)`` with BTCV ids (1 spleen, 2 right kidney,
        3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver, 7 stomach, 8 aorta, 9 IVC, 10 portal and
        splenic veins, 11 pancreas, 12/13 right/left adrenal); ``affine`` float64 ``(4, 4)``, RAS,
        ``diag(400/size, 400/size, 150/slices, 1)`` with the volume centred on the origin.

    Raises:
        ConfigError: ``size < 8`` or ``slices < 1``.
    """
    if size < 8:
        raise ConfigError(f"phantom size must be >= 8 pixels, got {size}")
    if slices < 1:
        raise ConfigError(f"phantom slices must be >= 1, got {slices}")
    rng = np.random.default_rng(int(seed))
    cv = Canvas(size, slices)
    shape = ShapeSampler(rng, cv.t)

    # Walls and the frame every organ is placed in, then the spine and the muscles around it.
    body = paint_body_wall(cv, shape)
    paint_rectus(cv, shape, body)
    spine = place_spine(shape, body)
    paint_back_muscles(cv, shape, spine)

    # Viscera, from the bowel up; the organs painted later lie on top where shapes overlap.
    paint_bowel(cv, shape, body)
    paint_liver(cv, shape, body)
    paint_spleen(cv, shape, body)
    paint_stomach(cv, shape, body)
    paint_gallbladder(cv, shape, body)
    pancreas = paint_pancreas(cv, shape, body)
    paint_portal_veins(cv, shape, body, pancreas)
    paint_kidneys(cv, shape, body)
    paint_adrenals(cv, shape, body)
    paint_oesophagus(cv, shape, body)
    paint_great_vessels(cv, shape, body, spine)

    # Bone last: the vertebra and the ribs in the muscle wall.
    paint_vertebra(cv, shape, spine)
    paint_ribs(cv, shape, body)

    return scan(cv, body.mask, rng), cv.label, cv.affine()
