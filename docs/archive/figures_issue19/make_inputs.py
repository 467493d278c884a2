# version-neutral inputs for the before/after figures
import json, numpy as np, torch
from collapsekit.data import PhantomConfig, load_split, select_slices, slice_tensor
from collapsekit.models import recalibrate_batch_norm
from collapsekit.models.builder import ModelConfig, build_encoder
torch.manual_seed(0)
vols = load_split("phantom", split="all", phantom=PhantomConfig(cases=12, size=64, validation=0))
images = slice_tensor(vols, select_slices(vols, 448), 64)
enc = build_encoder(ModelConfig(arch="resnet18"))
recalibrate_batch_norm(enc.backbone, images[:256])
enc.eval()
with torch.no_grad():
    z = enc.features(images[256:]).mean(dim=(2, 3))   # 192 x 512: N-1 < D
np.save("/tmp/mon/fig/random_resnet18.npy", z.numpy())
rng = np.random.default_rng(0)
# a collapsed-ish space: few directions + small noise
basis = rng.standard_normal((6, 512))
coll = rng.standard_normal((192, 6)) * np.array([5, 2, 1, .5, .2, .1]) @ basis + 1e-3 * rng.standard_normal((192, 512)) + 3
np.save("/tmp/mon/fig/collapsed.npy", coll.astype(np.float32))
hist = {}
for name, a in (("mocov2", 1.0), ("zca", 1.3)):
    hist[name] = [{"epoch": 1, "step": s, "effective_rank": 40 * a - 3 * s, "effective_rank_eigenvalues": 12 * a - s,
                   "proj_effective_rank_eigenvalues": 8 * a - 0.5 * s} for s in (1, 2, 3, 4, 5)]
json.dump(hist, open("/tmp/mon/fig/history.json", "w"))
