"""Markdown tables from experiments/results/*.json (final row of each run, and the FINAL curve)."""
import json, math
from pathlib import Path
R = Path(__file__).resolve().parent / "results"
rows = []
for p in sorted(R.glob("*.json")):
    d = json.loads(p.read_text())
    if "history" not in d:
        continue
    a, h, i = d["args"], d["history"][-1], d["init_bn_recal"]
    aug = f"crop {a['scale_min']}-1, jitter p {a['jitter_p']} x{a['jitter']}, blur p {a['blur_p']}"
    rows.append(f"| {a['name']} | {a['impl']} | {a['data']} | {aug} | {a['lr']}/{a['warmup']} | {h['step']} | "
                f"{h['loss']:.2f} | {h['top1']:.3f} | {h['inbatch_top1']:.3f} | {h['ho_top1_proj']:.3f} | {h['cos_proj']:.3f} | "
                f"{h['erank_backbone']:.1f} ({i['erank_backbone']:.0f}) | {h['erank_proj']:.1f} ({i['erank_proj']:.0f}) | {h['dead_relu']:.2f} |")
print("| run | step impl | data | augmentation | lr/warm-up | steps | loss | top-1 vs queue | top-1 in batch | held-out partner top-1 | proj cos | λ-erank backbone (init-recal) | λ-erank proj (init-recal) | dead ReLU |")
print("|" + "---|" * 14)
print("\n".join(rows))
f = R / "FINAL_ck_phantom_demo.json"
if f.exists():
    d = json.loads(f.read_text())
    print("\n| step | lr | loss | top-1 vs queue | top-1 in batch | held-out top-1 | proj cos | λ-erank bb | λ-erank proj | bb erank (batch BN) | dead ReLU | grad norm |")
    print("|" + "---|" * 12)
    for h in d["history"]:
        print(f"| {h['step']} | {h['lr']:.4f} | {h['loss']:.3f} | {h['top1']:.3f} | {h['inbatch_top1']:.3f} | {h['ho_top1_proj']:.3f} | "
              f"{h['cos_proj']:.3f} | {h['erank_backbone']:.1f} | {h['erank_proj']:.1f} | {h['erank_backbone_trainbn']:.1f} | {h['dead_relu']:.2f} | {h['gnorm']:.2f} |")
