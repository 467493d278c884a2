"""Dump middle slices (HU, labels) of phantom and texture-phantom training cases for real_ct_compare.py."""
import sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phantom_volumes, texturize
tr, _ = phantom_volumes()
out = {}
for i in range(6):
    v = tr[i]; t = texturize(v, i)
    z = int(v.slices[len(v.slices) // 2])
    out[f"phantom_{i}"] = np.asarray(v.image)[:, :, z] * 425 - 175
    out[f"texphantom_{i}"] = np.asarray(t.image)[:, :, z] * 425 - 175
    out[f"label_{i}"] = np.asarray(v.label)[:, :, z]
np.savez("/tmp/phantom_slices.npz", **out)
