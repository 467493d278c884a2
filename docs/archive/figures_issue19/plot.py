import json, numpy as np
import matplotlib; matplotlib.use("Agg")
from collapsekit.diagnostics import spectrum_report
from collapsekit.plotting import plot_spectrum, plot_rank_history, save_figure
import sys
out = sys.argv[1]
rs = [spectrum_report(np.load("/tmp/mon/fig/random_resnet18.npy"), name="random:resnet18 (BN recalibrated)"),
      spectrum_report(np.load("/tmp/mon/fig/collapsed.npy"), name="collapsed (6 directions)")]
fig, _ = plot_spectrum(rs); save_figure(fig, f"{out}/after_spectrum.png")
hist = json.load(open("/tmp/mon/fig/history.json"))
fig, _ = plot_rank_history(hist); save_figure(fig, f"{out}/after_rank_history.png")
