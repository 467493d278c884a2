"""Regenerate the notebooks (no outputs committed): ``python notebooks/build_notebooks.py``."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = """\
# Small settings so the notebook runs top to bottom on a laptop CPU in a minute or two.
# Set QUICK = False for the real defaults.
import os

import torch

QUICK = os.environ.get("COLLAPSEKIT_NOTEBOOK_QUICK", "1") == "1"
if QUICK:
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
%matplotlib inline"""

NB1 = [
    new_markdown_cell(
        "# Quickstart: is my representation collapsed?\n\n"
        "This notebook trains a tiny MoCo v2 + local + ZCA model on the built-in CT phantom, then "
        "diagnoses it next to a randomly initialised ResNet-18: the singular spectrum of the "
        "embedding covariance (Jing et al. 2022), the effective rank (Roy & Vetterli 2007; RankMe), "
        "and the inter-image cosine similarity. Everything here is the public API; the CLI "
        "(`collapsekit train`, `collapsekit spectrum`, `collapsekit similarity`) calls the same functions."
    ),
    new_code_cell(SETUP),
    new_markdown_cell("## 1. Train (or point `RUN` at an existing run directory / checkpoint)"),
    new_code_cell(
        """\
import tempfile
from collapsekit.train import config_from_dict, train

workdir = tempfile.mkdtemp(prefix="collapsekit-nb1-")
cfg = config_from_dict(
    {},
    steps=4 if QUICK else None,
    batch_size=8 if QUICK else 32,
    image_size=64 if QUICK else 128,
    phantom_cases=4 if QUICK else 12,
    phantom_size=64 if QUICK else 128,
    monitor_samples=64,
    final_samples=0 if QUICK else 2048,  # slices embedded for the run's final spectrum
    num_workers=0,
)
result = train(cfg, f"{workdir}/run")
RUN = result.run_dir
print(RUN, "finished:", result.finished, "last loss:", round(result.losses[-1], 3))"""
    ),
    new_markdown_cell("## 2. Load models and embed CT slices"),
    new_code_cell(
        """\
from collapsekit.data import PhantomConfig, load_split
from collapsekit.evaluation import extract_embeddings, recalibrate_baseline
from collapsekit.runs import load_model

volumes = load_split(
    "phantom", split="all", phantom=PhantomConfig(cases=4 if QUICK else 16, seed=123, validation=0)
)
size = 64 if QUICK else 128
# random:ARCH gets its BatchNorm statistics re-estimated on the data (the honest baseline);
# a trained model is returned as it is
models = [recalibrate_baseline(load_model(s), volumes, size) for s in (RUN, "random:resnet18")]
embeddings = [extract_embeddings(m, volumes, image_size=size, samples=128 if QUICK else 1024) for m in models]
[(e.name, e.z.shape) for e in embeddings]"""
    ),
    new_markdown_cell(
        "## 3. Spectrum and effective rank\n\nA collapsed representation has a spectrum whose tail "
        "drops steeply: few directions carry all the variance. Effective rank is 1 for rank one and "
        "D for isotropic embeddings."
    ),
    new_code_cell(
        """\
from collapsekit.diagnostics import spectrum_report
from collapsekit.plotting import plot_spectrum

reports = [spectrum_report(e.z, name=e.name) for e in embeddings]
for r in reports:
    print(f"{r.name:28s} effective rank (σ) {r.effective_rank_sigma:6.1f} (RankMe {r.rankme:6.1f})"
          f"  alpha {r.alpha:.2f}  std(L2) {r.std_l2:.4f} vs 1/sqrt(D) {r.d ** -0.5:.4f}")
fig, ax = plot_spectrum(reports)"""
    ),
    new_markdown_cell("## 4. Inter-image cosine similarity (same vs different volume)"),
    new_code_cell(
        """\
from collapsekit.diagnostics import pairwise_cosine_stats
from collapsekit.plotting import plot_similarity

sims = [pairwise_cosine_stats(e.z, groups=e.volume, name=e.name) for e in embeddings]
for s in sims:
    print(f"{s.name:28s} mean {s.mean_cosine:.3f}  same volume {s.same_volume.mean_cosine:.3f}  "
          f"different volume {s.different_volume.mean_cosine:.3f}")
fig, ax = plot_similarity(sims)"""
    ),
]

NB2 = [
    new_markdown_cell(
        "# Anatomy of collapse: why CT slices collapse, and what ZCA does\n\n"
        "The paper's argument: CT slices are alike (same body, same organs, same intensities), so "
        "MoCo's negatives are hard to tell apart and the representation collapses into few "
        "dimensions. This notebook measures (1) how alike the slices are in pixel space, (2) the "
        "global vs dense spectra of a backbone (segmentation uses the dense, per-location "
        "features), and (3) what a ZCA whitening layer does to a spectrum."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        """\
from collapsekit.data import PhantomConfig, load_split
from collapsekit.diagnostics import pairwise_cosine_stats
from collapsekit.evaluation import extract_embeddings, pixel_vectors, recalibrate_baseline
from collapsekit.runs import load_model
from collapsekit.plotting import plot_similarity

volumes = load_split(
    "phantom", split="all", phantom=PhantomConfig(cases=4 if QUICK else 16, seed=7, validation=0)
)
pixels, vol_ids = pixel_vectors(volumes, samples=128 if QUICK else 1024, size=64)
pix = pairwise_cosine_stats(pixels, groups=vol_ids, name="pixels (64x64)")
size = 64 if QUICK else 128
model = recalibrate_baseline(load_model("random:resnet18"), volumes, size)  # BN stats from the data
emb = extract_embeddings(model, volumes, image_size=size, samples=128 if QUICK else 1024)
sim = pairwise_cosine_stats(emb.z, groups=emb.volume, name="random ResNet-18 embedding")
print(f"pixel-space cosine: mean {pix.mean_cosine:.3f}; embedding cosine: mean {sim.mean_cosine:.3f}")
fig, ax = plot_similarity([pix, sim])"""
    ),
    new_markdown_cell(
        "## Global vs dense spectra\n\nThe pooled embedding averages the feature map; the dense "
        "features are the per-location vectors a segmentation head reads."
    ),
    new_code_cell(
        """\
from collapsekit.diagnostics import spectrum_report
from collapsekit.plotting import plot_spectrum

size = 64 if QUICK else 128
dense = extract_embeddings(model, volumes, image_size=size, samples=128, mode="dense")
glob = extract_embeddings(model, volumes, image_size=size, samples=256, mode="backbone")
reports = [spectrum_report(glob.z, name="global (pooled)"), spectrum_report(dense.z, name="dense (per location)")]
fig, ax = plot_spectrum(reports, title="random ResNet-18: global vs dense")"""
    ),
    new_markdown_cell(
        "## What ZCA whitening does to a spectrum\n\n"
        "`ZCAWhitening` computes `W = Σ^{-1/2}` per group of channels and outputs `W (x − μ)`. Applied to "
        "the backbone's embeddings, every group becomes white (covariance ≈ I), which lifts the tail "
        "of the spectrum. That is why collapsekit reports the features *entering* a whitening layer "
        "at the output: the whitened output is flat by construction."
    ),
    new_code_cell(
        """\
import torch
from collapsekit.models import ZCAWhitening

z = torch.from_numpy(glob.z)
zca = ZCAWhitening(z.shape[1], group_size=64, affine=False).train()
with torch.no_grad():
    white = zca(z)
before = spectrum_report(z, name="before ZCA", normalize=False)
after = spectrum_report(white, name="after ZCA (groups of 64)", normalize=False)
print(f"effective rank (σ) {before.effective_rank_sigma:.1f} -> {after.effective_rank_sigma:.1f}")
fig, ax = plot_spectrum([before, after], title="ZCA whitening flattens the spectrum")"""
    ),
]

NB3 = [
    new_markdown_cell(
        "# The ablation: load an `ablate` results directory and plot it\n\n"
        "`collapsekit ablate --out DIR` pretrains `mocov2`, `local`, `zca` and `local+zca`, diagnoses each "
        "and probes it. Point `ABLATION_DIR` at such a directory; by default this notebook runs a tiny "
        "ablation first so it works anywhere."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        """\
import tempfile
from collapsekit.experiments import AblationConfig, load_results, run_ablation

ABLATION_DIR = os.environ.get("ABLATION_DIR")
if ABLATION_DIR is None:
    ABLATION_DIR = tempfile.mkdtemp(prefix="collapsekit-nb3-")
    tiny = dict(image_size=32, steps=4, batch_size=8, queue_size=32, phantom_cases=4, samples=64,
                probe_epochs=2, probe_image_size=32)
    run_ablation(AblationConfig(methods=("mocov2", "local+zca"), overrides=tiny if QUICK else {}), ABLATION_DIR)
results = load_results(ABLATION_DIR)  # typed: AblationResults
for m in results.methods:
    rank, dice = m.mean.backbone.effective_rank_lambda, m.mean.mean_dice
    print(f"{m.label:36s} backbone effective rank (λ) {rank:6.1f}  mean Dice {100 * dice:5.1f}  {m.mean.health or ''}")"""
    ),
    new_code_cell(
        """\
from dataclasses import replace

import matplotlib.pyplot as plt
from collapsekit.plotting import plot_ablation_dice, plot_rank_history, plot_spectrum

spectra = [replace(m.evals[0].backbone, name=m.label) for m in results.methods]
fig, axes = plt.subplots(1, 2, figsize=(13, 4), layout="constrained")
plot_spectrum(spectra, ax=axes[0], title="global spectra")
plot_rank_history(results, ax=axes[1])
fig, ax = plot_ablation_dice(results)"""
    ),
]

PLAIN_LOOP = """\
import torch
import torch.nn.functional as F
from torch import nn
from collapsekit.data import PhantomConfig, load_split, select_slices, slice_tensor
from collapsekit.monitoring import CollapseMonitor

vols = load_split("phantom", split="all", phantom=PhantomConfig(cases=6, size=64, validation=0))
images = slice_tensor(vols, select_slices(vols, 256), 64)  # (256, 1, 64, 64) CT slices
train_x, held_out = images[:192], images[192:]  # the monitor's fixed held-out set
model = nn.Sequential()  # a toy backbone + projector: any nn.Module will do
model.backbone = nn.Sequential(nn.Conv2d(1, 64, 5, 4, 2), nn.BatchNorm2d(64), nn.ReLU())
model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
model.projector = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


def info_nce(model, x):  # a toy contrastive loss between two "views" of each slice
    z1 = F.normalize(model(x + 0.1 * torch.randn_like(x)), dim=1)
    z2 = F.normalize(model(x.flip(-1)), dim=1)
    return F.cross_entropy(z1 @ z2.T / 0.2, torch.arange(len(x)))


opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
monitor = CollapseMonitor(model, held_out, layers=["backbone", "projector"], every=10)
for step in range(1, STEPS + 1):
    opt.zero_grad()
    info_nce(model, train_x[torch.randint(len(train_x), (32,))]).backward()
    opt.step()
    if (res := monitor.maybe_measure(step)) is not None:  # eval mode, no grad, mode restored
        print(step, {k: round(v, 2) for k, v in res.scalars().items() if "lambda" in k})"""

LIGHTNING = """\
import lightning as L
from lightning.pytorch.loggers import CSVLogger
from collapsekit.monitoring.lightning import CollapseMonitorCallback


class SSL(L.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, x, batch_idx):
        return info_nce(self, x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


ssl = SSL(model)
spaces = {"backbone": "net.backbone", "projector": "net.projector"}
callback = CollapseMonitorCallback(CollapseMonitor(ssl, held_out, layers=spaces, every=10))
trainer = L.Trainer(
    max_steps=STEPS, callbacks=[callback], logger=CSVLogger(workdir), enable_progress_bar=False
)
trainer.fit(ssl, torch.utils.data.DataLoader(train_x, batch_size=32, shuffle=True))
print(trainer.callback_metrics["collapse/backbone/effective_rank_lambda"])"""

NB4 = [
    new_markdown_cell(
        "# Monitor dimensional collapse in your own training loop\n\n"
        "`CollapseMonitor` embeds a fixed held-out set every `every` steps (eval mode, no "
        "gradients, the previous train/eval mode restored) and reports, per embedding space, the "
        "effective rank (λ) and effective rank (σ), RankMe, α-ReQ, the std of L2-normalised embeddings and "
        "the mean pairwise cosine — the same functions as `collapsekit spectrum`, and the same "
        "monitor `collapsekit train` runs. It raises a `CollapseWarning` when a threshold is "
        "crossed. Below: a plain PyTorch loop, then PyTorch Lightning "
        "(`pip install 'collapsekit[lightning]'`)."
    ),
    new_code_cell(
        SETUP
        + "\n\nimport tempfile\n\nSTEPS = 30 if QUICK else 300\nworkdir = tempfile.mkdtemp(prefix='collapsekit-nb4-')"
    ),
    new_markdown_cell(
        "## 1. A plain PyTorch loop\n\nA toy contrastive model on phantom CT slices; the monitor "
        "hooks the `backbone` and `projector` submodules (the backbone's `(B, 64, 16, 16)` feature "
        "map is averaged over space to `(B, 64)`, and `res['backbone'].pooling` says so). With a callable instead, `CollapseMonitor(fn, held_out)` takes "
        "`fn(x) -> tensor` or `-> {space: tensor}`."
    ),
    new_code_cell(PLAIN_LOOP),
    new_markdown_cell(
        "Each result holds the full `SpectrumResult` of every space, so the spectra plot as "
        "everywhere else in collapsekit; `res.scalars('collapse/')` is what to send to "
        "TensorBoard (`writer.add_scalar(k, v, step)` for each item) or any logger."
    ),
    new_code_cell(
        """\
import matplotlib.pyplot as plt
from collapsekit.plotting import plot_spectrum

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for space in ("backbone", "projector"):
    steps = [r.step for r in monitor.history]
    axes[0].plot(steps, [r[space].effective_rank_lambda for r in monitor.history], "o-", label=space)
axes[0].set(xlabel="step", ylabel="effective rank (λ)", title="held-out effective rank (λ)")
axes[0].legend()
plot_spectrum([m.spectrum for m in monitor.history[-1].spaces.values()], ax=axes[1])
fig.tight_layout()"""
    ),
    new_markdown_cell(
        "## 2. PyTorch Lightning\n\n`CollapseMonitorCallback` measures after every `every`-th "
        "optimiser step and writes `collapse/<space>/<metric>` to every logger of the Trainer "
        "(CSV, TensorBoard, W&B ...) at that step, and to `trainer.callback_metrics` (so "
        "`EarlyStopping` or `ModelCheckpoint` can watch an effective rank)."
    ),
    new_code_cell(LIGHTNING),
    new_markdown_cell(
        "## 3. Warnings\n\nBy default a `CollapseWarning` is raised when a space's effective "
        "rank (λ) falls below 1.5 (`min_rank_lambda`) or the projector's mean cosine reaches "
        "0.95 (`max_cosine`), the thresholds of `collapsekit.diagnostics.health`; `rank_fraction` "
        "and `std_fraction` add optional rules. The `warnings` module filters it like any other: "
        "here a projector that maps every slice to the same direction."
    ),
    new_code_cell(
        """\
import warnings
from collapsekit.monitoring import CollapseWarning

collapsed = nn.Sequential(model.backbone, model.pool, nn.Linear(64, 1), nn.Softplus(), nn.Linear(1, 32, bias=False))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", CollapseWarning)
    CollapseMonitor(collapsed, held_out, max_cosine=0.9).measure(step=0)
for w in caught:
    print(w.category.__name__, ":", w.message)"""
    ),
]


def main() -> None:
    for name, cells in [
        ("01_quickstart.ipynb", NB1),
        ("02_anatomy_of_collapse.ipynb", NB2),
        ("03_ablation.ipynb", NB3),
        ("04_monitor_your_loop.ipynb", NB4),
    ]:
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    main()
