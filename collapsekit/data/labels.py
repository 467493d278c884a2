"""Label ids of the CT datasets collapsekit reads.

BTCV (Synapse multi-atlas abdomen, Landman et al. 2015): 13 organs plus background, the ids used by
its label files and by MONAI's ``dataset_0.json``. AbdomenCT-1K (Ma et al. 2021): 4 organs.
"""

from __future__ import annotations

__all__ = ["BTCV_LABELS", "ABDOMENCT1K_LABELS", "BTCV_TO_ABDOMENCT1K"]

#: BTCV label id -> organ name (0 is background).
BTCV_LABELS: dict[int, str] = {
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "ivc",
    10: "portal_splenic_veins",
    11: "pancreas",
    12: "right_adrenal",
    13: "left_adrenal",
}

#: AbdomenCT-1K mask id -> organ name (0 is background).
ABDOMENCT1K_LABELS: dict[int, str] = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}

#: BTCV id -> AbdomenCT-1K id for the organs both datasets label (the others map to background).
BTCV_TO_ABDOMENCT1K: dict[int, int] = {6: 1, 2: 2, 3: 2, 1: 3, 11: 4}
