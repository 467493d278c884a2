"""Real CT (pydicom's CT_small.dcm, run with a /tmp venv that has pydicom) vs phantom slices:
HU histogram of soft tissue and local texture (std in 5x5 windows of soft tissue, HU)."""
import json
import numpy as np, pydicom
from pydicom.data import get_testdata_file
from scipy import ndimage
ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
def stats(h, name, spacing):
    soft = (h > -20) & (h < 120)
    core = ndimage.binary_erosion(soft, iterations=2)
    m = ndimage.uniform_filter(h, 5); m2 = ndimage.uniform_filter(h * h, 5)
    lstd = np.sqrt(np.clip(m2 - m * m, 0, None))[core]
    # lag-1 autocorrelation of the high-pass residual inside soft tissue (noise correlation)
    r = h - ndimage.gaussian_filter(h, 2)
    c = core[:, :-1] & core[:, 1:]
    ac = float(np.corrcoef(r[:, :-1][c], r[:, 1:][c])[0, 1])
    win = np.clip(h, -175, 250)
    return {"name": name, "pixel_mm": spacing, "shape": list(h.shape), "soft_tissue_fraction": float(soft.mean()),
            "soft_HU_mean": float(h[soft].mean()), "soft_HU_std": float(h[soft].std()),
            "local5x5_std_median": float(np.median(lstd)), "local5x5_std_p90": float(np.percentile(lstd, 90)),
            "residual_lag1_autocorr": ac, "window_hist10": np.histogram(win, 10, (-175, 250))[0].tolist()}
res = [stats(hu, "real CT_small.dcm", [float(x) for x in ds.PixelSpacing])]
d = np.load("/tmp/phantom_slices.npz")
for k in sorted(d.files):
    if not k.startswith("label"):
        res.append(stats(d[k], k, [3.125, 3.125]))
for r in res:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "window_hist10"})
json.dump(res, open("/work/wt-collapse/experiments/results/real_ct_compare.json", "w"), indent=1)
