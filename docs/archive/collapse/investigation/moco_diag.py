"""One MoCo v2 run with full diagnostics (issue 10 investigation).

Example:
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/wt-collapse /work/main/.venv/bin/python \
      experiments/moco_diag.py --name base_ck --impl ck --data phantom --size 64 --steps 400 --lr 0.02
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RefMoCo,
    heldout_retrieval,
    Views,
    build_data,
    eval_encoder,
    lr_at,
    make_batch,
    monitor_images,
    recalibrate_bn,
)

from collapsekit.models.builder import ModelConfig, build_encoder  # noqa: E402
import collapsekit.models.moco as ck_moco  # noqa: E402
from collapsekit.models.moco import MoCo  # noqa: E402

# Stash q and k of collapsekit's step (monkeypatch, behaviour unchanged) for in-batch diagnostics.
_STASH: dict = {}
_orig_logits = ck_moco.info_nce_logits


def _stash_logits(q, k, queue, temperature):
    _STASH["q"], _STASH["k"] = q.detach(), k.detach()
    return _orig_logits(q, k, queue, temperature)


ck_moco.info_nce_logits = _stash_logits

RES = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--impl", choices=["ck", "ref"], default="ck")
    ap.add_argument("--ref-splits", type=int, default=1)
    ap.add_argument("--data", choices=["phantom", "texphantom", "synthetic"], default="phantom")
    ap.add_argument("--tex-strength", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--m", type=float, default=0.99)
    ap.add_argument("--T", type=float, default=0.2)
    ap.add_argument("--scale-min", type=float, default=0.2)
    ap.add_argument("--jitter", type=float, default=1.0, help="intensity jitter strength (1 = default)")
    ap.add_argument("--jitter-p", type=float, default=0.8)
    ap.add_argument("--blur-p", type=float, default=0.5)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--abort-after", type=int, default=250, help="stop once collapsed after this step")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    t_start = time.time()
    train, held = build_data(a.data, a.tex_strength)
    tf = Views(
        jitter_strength=a.jitter, size=a.size, scale=(a.scale_min, 1.0), jitter_p=a.jitter_p, blur_p=a.blur_p
    )
    mon = monitor_images(held, a.size)
    pair = make_batch(held, tf, 0, 256, seed=12345)  # fixed held-out view pairs
    cfg = ModelConfig(method="mocov2", queue_size=a.K, momentum=a.m, temperature=a.T)

    # reference: random init with BN running stats recalibrated on the monitor set
    torch.manual_seed(a.seed)
    init = build_encoder(cfg)
    recalibrate_bn(init, mon)
    init_metrics = eval_encoder(init, mon)
    init_metrics.update(heldout_retrieval(init, pair))
    del init

    torch.manual_seed(a.seed)
    model = MoCo(cfg) if a.impl == "ck" else RefMoCo(cfg, a.ref_splits)
    model.train()
    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.wd)
    ln_k = math.log(a.K + 1)
    hist, acc = [], {"loss": 0.0, "top1": 0.0, "inbatch_top1": 0.0, "gnorm": 0.0, "pos": 0.0, "neg": 0.0, "n": 0}
    status = "finished"
    print(f"[{a.name}] n_train={len(train)} n_mon={mon.shape[0]} ln(K+1)={ln_k:.3f} init={init_metrics}", flush=True)
    t0 = time.time()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        batch = make_batch(train, tf, step, a.batch, a.seed)
        if a.impl == "ck":
            out = model(batch)
            loss, logits = out.loss, out.logits
            q, k = _STASH["q"], _STASH["k"]
        else:
            loss, logits = model(batch)
            q, k = model.last_q, model.last_k
        # positive ranked first among the other keys of the *same* batch (same BN statistics)
        sim = q @ k.t()
        acc["inbatch_top1"] += float((sim.argmax(1) == torch.arange(sim.shape[0])).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))
        opt.step()
        T = a.T
        acc["loss"] += float(loss.detach())
        acc["top1"] += float((logits.argmax(1) == 0).float().mean())
        acc["gnorm"] += float(gn)
        acc["pos"] += float(logits[:, 0].mean()) * T
        acc["neg"] += float(logits[:, 1:].mean()) * T
        acc["n"] += 1
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            n = acc.pop("n")
            rec = {"step": step + 1, "lr": opt.param_groups[0]["lr"]}
            rec.update({k: v / n for k, v in acc.items()})
            rec.update(eval_encoder(model.encoder_q, mon))
            tb = eval_encoder(model.encoder_q, mon, train_bn=True)
            rec.update({k + "_trainbn": v for k, v in tb.items() if k != "n_monitor"})
            rec.update(heldout_retrieval(model.encoder_q, pair))
            rec.update({k + "_trainbn": v for k, v in heldout_retrieval(model.encoder_q, pair, True).items()})
            rec["s_per_step"] = (time.time() - t0) / (step + 1)
            hist.append(rec)
            acc = {"loss": 0.0, "top1": 0.0, "inbatch_top1": 0.0, "gnorm": 0.0, "pos": 0.0, "neg": 0.0, "n": 0}
            print(
                f"[{a.name}] step {rec['step']:4d} loss {rec['loss']:.3f} top1 {rec['top1']:.3f} inbatch {rec['inbatch_top1']:.3f} "
                f"pos {rec['pos']:.3f} neg {rec['neg']:.3f} cos_proj {rec['cos_proj']:.3f} "
                f"erank bb {rec['erank_backbone']:.1f} proj {rec['erank_proj']:.1f} dead {rec['dead_relu']:.3f} "
                f"gn {rec['gnorm']:.3f} | held-out top1 eval {rec['ho_top1_proj']:.3f} trainBN {rec['ho_top1_proj_trainbn']:.3f} | trainBN cos_proj {rec['cos_proj_trainbn']:.3f} erank bb {rec['erank_backbone_trainbn']:.1f} proj {rec['erank_proj_trainbn']:.1f} | {rec['s_per_step']:.2f}s/step",
                flush=True,
            )
            if step + 1 >= a.abort_after and rec["cos_proj"] > 0.98 and (
                rec["loss"] > 0.97 * ln_k or rec["inbatch_top1"] < 2.0 / a.batch
            ):
                status = f"aborted: collapsed at step {step + 1}"
                break
    last = hist[-1]
    # healthy: loss <= 0.8 ln(K+1), top-1 vs queue >= 10x chance, projector mean cosine < 0.9
    healthy = last["loss"] <= 0.8 * ln_k and last["top1"] >= 10.0 / (a.K + 1) and last["cos_proj"] < 0.9
    res = {
        "args": vars(a),
        "ln_K1": ln_k,
        "init_bn_recal": init_metrics,
        "history": hist,
        "status": status,
        "healthy": healthy,
        "wall_s": time.time() - t_start,
        "cmd": " ".join(sys.argv),
    }
    # final eigenvalue spectra (normalised lambda, descending) of the held-out embeddings, eval-mode BN
    with torch.no_grad():
        enc = model.encoder_q.eval()
        f = torch.cat([enc.features(c) for c in mon.split(128)])
        spec = {}
        for nm, x in (("backbone", f.mean(dim=(2, 3))), ("proj", enc.project(f))):
            x = x.double() - x.double().mean(0)
            lam = torch.linalg.eigvalsh(x.t() @ x / (x.shape[0] - 1)).flip(0).clamp_min(0)
            spec[nm] = (lam / lam.sum()).tolist()
        res["spectrum"] = spec
    torch.save(model.encoder_q.state_dict(), f"/tmp/{a.name}_encoder_q.pt")
    RES.mkdir(parents=True, exist_ok=True)
    (RES / f"{a.name}.json").write_text(json.dumps(res, indent=1))
    line = (
        f"- {time.strftime('%H:%M')} `{a.name}` ({a.impl}, {a.data}, {a.size}px, K={a.K}, m={a.m}, lr={a.lr}, "
        f"warmup={a.warmup}, scale_min={a.scale_min}, jitter={a.jitter} p={a.jitter_p}, blur_p={a.blur_p}): {status} at step {last['step']}; "
        f"loss {last['loss']:.3f} (ln(K+1)={ln_k:.3f}), top1 vs queue {last['top1']:.3f}, top1 in-batch {last['inbatch_top1']:.3f}, cos_proj {last['cos_proj']:.3f}, "
        f"erank bb {last['erank_backbone']:.1f} / proj {last['erank_proj']:.1f} "
        f"(init-recal {init_metrics['erank_backbone']:.1f} / {init_metrics['erank_proj']:.1f}), "
        f"dead ReLU {last['dead_relu']:.2f}; held-out partner top1 (proj) eval-BN {last['ho_top1_proj']:.3f} / batch-BN {last['ho_top1_proj_trainbn']:.3f} (init {init_metrics['ho_top1_proj']:.3f}); train-mode BN: cos_proj {last['cos_proj_trainbn']:.3f}, erank bb {last['erank_backbone_trainbn']:.1f} / proj {last['erank_proj_trainbn']:.1f}; healthy={healthy}; {res['wall_s']:.0f}s\n"
    )
    with open(RES / "PROGRESS.md", "a") as f:
        f.write(line)
    print(line, flush=True)


if __name__ == "__main__":
    main()
