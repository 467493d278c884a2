"""Is the instance-discrimination task solvable at all? Two views of one slice vs views of other
slices, in pixel space (centred cosine) and in a fixed random ResNet-18 (BN recalibrated), with
top-1 retrieval of the partner view among N candidates (like MoCo's positive among K negatives)."""
import json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Views, build_data, make_batch, recalibrate_bn, monitor_images
from collapsekit.models.builder import ModelConfig, build_encoder

def retrieval(a, b):
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    s = a @ b.t()
    n = s.shape[0]
    pos = s.diag().mean().item(); neg = ((s.sum() - s.diag().sum()) / (n * n - n)).item()
    top1 = (s.argmax(1) == torch.arange(n)).float().mean().item()
    return pos, neg, top1

N, size = 257, 64
out = {}
for data in ["phantom", "texphantom", "synthetic"]:
    train, held = build_data(data)
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(method="mocov2"))
    recalibrate_bn(enc, monitor_images(held, size))
    for smin, js in [(0.2, 1.0), (0.5, 1.0), (0.5, 0.5), (0.8, 0.5)]:
        tf = Views(jitter_strength=js, size=size, scale=(smin, 1.0))
        b = make_batch(train, tf, 3, N, seed=1)
        v1, v2 = b["view1"].flatten(1), b["view2"].flatten(1)
        mu = torch.cat([v1, v2]).mean(0)
        pp = retrieval(v1 - mu, v2 - mu)
        with torch.no_grad():
            f1, f2 = enc.embed(b["view1"]), enc.embed(b["view2"])
        mu = torch.cat([f1, f2]).mean(0)
        pf = retrieval(f1 - mu, f2 - mu)
        key = f"{data}/scale{smin}-1/jitter{js}"
        out[key] = {"pixel_pos_cos": pp[0], "pixel_neg_cos": pp[1], "pixel_top1": pp[2],
                    "randcnn_pos_cos": pf[0], "randcnn_neg_cos": pf[1], "randcnn_top1": pf[2]}
        print(key, {k: round(v, 3) for k, v in out[key].items()}, flush=True)
    if data != "synthetic":
        # HU statistics inside the liver (label 6) of the training volumes
        vols = train.volumes
        v = np.concatenate([np.asarray(x.image)[np.asarray(x.label) == 6] for x in vols[:10]]) * 425 - 175
        out[f"{data}/liver_HU"] = {"mean": float(v.mean()), "std": float(v.std()),
                                   "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
        print(data, out[f"{data}/liver_HU"], flush=True)
Path(__file__).resolve().parent.joinpath("results", "view_similarity.json").write_text(json.dumps(out, indent=1))
