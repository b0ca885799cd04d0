# %% [markdown]
# # Privacy: gradient inversion under FL, FFL and DP, and the accuracy cost of DP
#
# An honest-but-curious server sees each peer's update. This notebook measures how much of a
# peer's training images it can rebuild from that update with the gradient-inversion attack of
# Geiping et al. (2020, "Inverting Gradients"): cosine gradient matching plus total variation,
# signed Adam, restarts, labels recovered from the output-bias gradient as in iDLG. It compares
# three things the server may see:
#
# * **FL**: the peer's own one-step update;
# * **FFL**: the update after FFL mixing (pairs of peers swap a random half of their coordinates;
#   the server sees only mixed updates), as in the figures of the FFL README;
# * **DP**: the update clipped to norm C with Gaussian noise of standard deviation z*C (client-level DP).
#
# Models: the paper's MNIST CNN (21,840 parameters) and, for CIFAR-10, a small CNN
# (`flhelpers.privacy.SmallConvNet`, 34,538 parameters; ResNet18 costs seconds per attack step on
# a CPU), both at random initialisation (the first round's global model). Scores: PSNR and SSIM
# of each reconstruction against its best-matching true input, and the label recovery rate.
#
# The last section runs DP-FedAvg (clip, noise on the sum, RDP accountant) on MNIST-iid and plots
# accuracy against epsilon.
#
# Run headless: `papermill notebooks/Privacy.ipynb out.ipynb -p profile quick` (`quick`: about
# 4 minutes on one CPU core; `paper`: more attack steps and restarts, the paper's MNIST-iid runs).

# %% tags=["parameters"]
profile = "quick"        # "quick" (CI), "paper" (more steps, restarts, full MNIST-iid runs) or "smoke"
data_root = None         # default: $FLHELPERS_DATA, else ./data
results_dir = None       # runs (reused), figures/privacy/*.png, tables/privacy_*.csv and .md;
                         # None: the repository's results/ (also from notebooks/)
device = "cpu"           # "cpu" or "cuda"
seed = 0
threads = 1              # CPU threads; one is fastest for these small models on a shared machine

# %%
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm falls back to text bars

from flhelpers.config import benchmark_config
from flhelpers.data import load_dataset
from flhelpers.models import MnistCNN
from flhelpers.plots import save_figure
from flhelpers.privacy import SmallConvNet
from flhelpers_lab.plots.privacy import plot_accuracy_vs_epsilon, plot_reconstruction_grid
from flhelpers_lab.privacy import dp_accuracy_study, privacy_profile, run_inversion_study
from flhelpers.results.tables import write_table
from flhelpers_lab.store import prepare_results_store

torch.set_num_threads(threads)
P = privacy_profile(profile)
results_dir = prepare_results_store(results_dir, profile)  # absolute: the same from notebooks/ and the root
started = time.perf_counter()
studies = {}
print(P.inversion)

# %% [markdown]
# ## 1. MNIST, one image per peer
#
# Two peers, k and j, each take one SGD step on one image. Rows: the inputs; the reconstruction
# from the original updates (FL); from the mixed updates (FFL); from DP-noised updates at a few
# noise multipliers z. Each reconstruction is titled with its PSNR.

# %%
mnist = load_dataset("mnist", data_root)
torch.manual_seed(seed)
mnist_model = MnistCNN(10).to(device)
study = studies[("MNIST", 1)] = run_inversion_study(mnist, mnist_model, P, batch_size=1, seed=seed, progress=True)
fig = plot_reconstruction_grid(study, title="MNIST: one image per peer (k, j)")
save_figure(fig, results_dir, "privacy", "mnist_single")

# %% [markdown]
# ## 2. MNIST, a batch of 8 per peer
#
# One figure per peer: its 8 inputs, then the reconstruction from its original update (FL), from
# the mixed update (FFL) and from a DP-noised update.

# %%
n = max(P.batch_sizes)
study = studies[("MNIST", n)] = run_inversion_study(mnist, mnist_model, P, batch_size=n, seed=seed, progress=True)
for peer in range(P.peers):
    fig = plot_reconstruction_grid(study, peers=[peer], title=f"MNIST: a batch of {n}, peer {peer}")
    save_figure(fig, results_dir, "privacy", f"mnist_batch_peer{peer}")

# %% [markdown]
# ## 3. CIFAR-10 (small CNN), one image and a batch of 8 per peer

# %%
cifar = load_dataset("cifar10", data_root)
torch.manual_seed(seed)
cifar_model = SmallConvNet(in_channels=3, num_classes=10, image_size=32).to(device)
study = studies[("CIFAR-10", 1)] = run_inversion_study(cifar, cifar_model, P, batch_size=1, seed=seed, progress=True)
fig = plot_reconstruction_grid(study, title="CIFAR-10: one image per peer (k, j)")
save_figure(fig, results_dir, "privacy", "cifar10_single")
study = studies[("CIFAR-10", n)] = run_inversion_study(cifar, cifar_model, P, batch_size=n, seed=seed, progress=True)
for peer in range(P.peers):
    fig = plot_reconstruction_grid(study, peers=[peer], title=f"CIFAR-10: a batch of {n}, peer {peer}")
    save_figure(fig, results_dir, "privacy", f"cifar10_batch_peer{peer}")

# %% [markdown]
# ## 4. PSNR / SSIM table: FL vs FFL vs DP
#
# Means over the peers (and over each batch's images, each reconstruction scored against its
# best-matching input). `epsilon` is one round of the Gaussian mechanism at delta = 1e-5 for the
# DP rows: reconstructions stop only at noise levels far below any meaningful privacy guarantee.

# %%
table = pd.concat([s.summary().assign(dataset=d, images_per_peer=b) for (d, b), s in studies.items()],
                  ignore_index=True)
table = table[["dataset", "images_per_peer", "victim", "psnr", "ssim", "label_recovery", "epsilon"]]
write_table(table, results_dir, "privacy_reconstruction", digits=3)
display(table.round({"psnr": 2, "ssim": 3, "label_recovery": 2, "epsilon": 1}))

# %% [markdown]
# ## 5. The accuracy cost of DP-FedAvg on MNIST-iid
#
# DP-FedAvg wraps FedAvg (`defense="dp"`): each update clipped to norm C, Gaussian noise of
# standard deviation z*C added to the sum, the sum divided by the number of peers. Epsilon is the
# RDP accountant's after the last round (delta = 1e-5, sampling rate = fraction of peers per
# round = 1 here, so no amplification by subsampling). With tens of peers per round the noise on
# the mean is large; McMahan et al. (2018) had thousands of users per round.

# %%
base = benchmark_config("mnist-iid", P.benchmark_profile, seed=seed, device=device, **P.dp_overrides)
dp_table = dp_accuracy_study(base, P.dp_noise, P.dp_clip, delta=P.dp_delta, data_root=data_root,
                             results_dir=results_dir, dataset=mnist)
write_table(dp_table, results_dir, "privacy_dp_accuracy", digits=4)
display(dp_table.drop(columns=["run_id"]).round({"epsilon": 2, "final_accuracy": 4, "accuracy": 4,
                                                 "source_accuracy": 4, "attack_success_rate": 4}))
fig = plot_accuracy_vs_epsilon(dp_table, title=f"MNIST-iid, {base.num_peers} peers, {base.rounds} rounds, C = {P.dp_clip}")
save_figure(fig, results_dir, "privacy", "dp_accuracy_vs_epsilon")

# %%
print(f"notebook time: {time.perf_counter() - started:.0f} s ({profile} profile); figures in "
      f"{Path(results_dir) / 'figures' / 'privacy'}, tables in {Path(results_dir) / 'tables'}")
