"""The anatomy of one phantom case, by region; each ``paint_*`` draws one region onto a canvas.

Private to the phantom generator (:mod:`collapsekit.data.phantom.generate`): not part of the public API.

The painting order is part of the phantom's definition: later regions overwrite earlier ones
where they overlap, and every region draws its random parameters from the case's generator in turn.
"""

from __future__ import annotations

from collapsekit.data.phantom._anatomy.body import Body, paint_body_wall
from collapsekit.data.phantom._anatomy.bowel import paint_bowel
from collapsekit.data.phantom._anatomy.muscles import paint_back_muscles, paint_rectus
from collapsekit.data.phantom._anatomy.organs import (
    Pancreas,
    paint_adrenals,
    paint_gallbladder,
    paint_kidneys,
    paint_liver,
    paint_oesophagus,
    paint_pancreas,
    paint_spleen,
    paint_stomach,
)
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._anatomy.skeleton import (
    Spine,
    paint_ribs,
    paint_vertebra,
    place_spine,
)
from collapsekit.data.phantom._anatomy.vessels import paint_great_vessels, paint_portal_veins

__all__ = [
    "Body",
    "Pancreas",
    "ShapeSampler",
    "Spine",
    "paint_adrenals",
    "paint_back_muscles",
    "paint_body_wall",
    "paint_bowel",
    "paint_gallbladder",
    "paint_great_vessels",
    "paint_kidneys",
    "paint_liver",
    "paint_oesophagus",
    "paint_pancreas",
    "paint_portal_veins",
    "paint_rectus",
    "paint_ribs",
    "paint_spleen",
    "paint_stomach",
    "paint_vertebra",
    "place_spine",
]
