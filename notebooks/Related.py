# %% [markdown]
# # Related systems: FFL, loss-based user elimination, Krum under inner-product manipulation
#
# Three related systems, each known from its public README (the project's notes on the paper, `PAPER.md` section 7), run in this lab as
# first-class attacks and defenses (`flhelpers.attacks`, `flhelpers.defenses`), each reproducing the *shape* of its
# README's main figure on MNIST:
#
# 1. **FFL** (`ffl-readme.md`): FL with FedAvg / Median (/ Trimmed Mean at `paper`) vs Fragmented FL
#    (pairwise mixing + reputation), overall accuracy under the Gaussian-noise attack and
#    source-class accuracy under label flipping, against the number of attackers; then FFL's
#    reputation round by round.
# 2. **User elimination** (`user-elimination-readme.md`): detection accuracy and F1 of the
#    eliminated peers, and accuracy / recall of the attacked class with and without the
#    defense, against the attacker ratio (10-40 %). Unlike the original (noise of scale 1e-4),
#    each loss report here is a real epsilon-LDP report; we run a meaningful budget (epsilon 10)
#    and one that protects little (epsilon 1000), with our separation test and with the
#    original's rule (always drop the high-loss cluster).
# 3. **Krum under IPM** (`fedavg-krum-dp-readme.md`): accuracy (mean of the last rounds) and how
#    often Krum picked an attacker's update, for 0 to 11 attackers of 25 peers per round
#    (epsilon 1, attack from round 10).
#
# `profile="quick"` (the default) shrinks data, peers and rounds so that the notebook runs in
# minutes on a laptop; `profile="paper"` uses the paper-scale presets (hours). Finished runs
# are read back from `results_dir`, not recomputed; the round-by-round traces are computed again
# each time (two runs). Every table averages the last rounds of a run (a quarter of the rounds
# at `quick`, the last 10 at `paper`), never a single round.

# %% tags=["parameters"]
profile = "quick"        # "quick" (minutes on 2 CPU cores) or "paper" (hours)
benchmarks = None         # FFL comparison's benchmarks; None: MNIST-iid (+ CIFAR10-iid at "paper").
                          # User elimination and Krum run on the first one.
defenses = None           # FL rules compared with FFL; None: fedavg, median, ffl (+ trimmed-mean at "paper")
attacker_ratios = None    # user elimination's ratios; None: 0.1, 0.2, 0.3, 0.4
seeds = [0]               # every run once per seed; figures show the mean
device = "cpu"            # "cpu" or "cuda"
data_root = None          # None: $FLHELPERS_DATA, else ./data
results_dir = None        # runs, figures; None: the repository's results/ (also from notebooks/)
rounds = None             # override every grid's number of rounds
peers = None              # override the peers of the FFL and elimination grids (Krum keeps 25)
torch_threads = None      # e.g. 1 on a machine shared with other jobs (the traces; grid runs use 1 each)
workers = 2               # processes for the grids' runs (2 suits a 2-core machine; 1: in this kernel)

# %%
import time
import warnings

import torch
from IPython.display import display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm falls back to text bars

import flhelpers  # noqa: F401  (registers every attack and rule: gaussian-noise, ipm, alie, ffl, user-elimination)
from flhelpers.plots import save_figure
from flhelpers_lab.plots.related import plot_elimination_detection, plot_elimination_effect, plot_ffl, plot_krum_ipm
from flhelpers_lab import related as study
from flhelpers_lab.store import prepare_results_store

if torch_threads:
    torch.set_num_threads(int(torch_threads))
if benchmarks is None:
    benchmarks = ["mnist-iid"] + (["cifar10-iid"] if profile == "paper" else [])
main = benchmarks[0]
results_dir = prepare_results_store(results_dir, profile)  # absolute: the same from notebooks/ and the root
overrides = dict(rounds=rounds, num_peers=peers, device=device)
started = time.perf_counter()
print(f"profile {profile}; FFL on {benchmarks}; user elimination and Krum on {main}")

# %% [markdown]
# ## 1. FFL: FL rules vs Fragmented FL
#
# Attackers either add Gaussian noise (sigma 1) to their trained model or flip their source-class
# labels (7 -> 1). FFL's peers pair up and swap a random half of their update coordinates
# (`flhelpers.defenses.ffl.mix_pairs`: the sum of the updates is unchanged); the server then scores
# each mixed update, keeps a reputation per peer, and selects and weights by it.
#
# **Measured:** overall accuracy under Gaussian noise and accuracy on the source label under label
# flipping (mean of the last rounds), against the number of attackers of 20 peers; FFL's detection
# over all rounds (a peer counts as rejected when it was not selected or got weight 0); and, for
# the Gaussian-noise run with the most attackers, FFL's reputation round by round
# (`study.ffl_trace`).
#
# **Our reading.** The seed gives no formula; PAPER.md section 7 names only the ingredients
# (distance to the median update's norm, cosine to the median of the output layer, selection and
# weighting). What we chose (`flhelpers.defenses.ffl.FFL`):
#
# * score of a mixed update: `0.2 x min(n, m) / max(n, m)` (its norm `n` against the median norm
#   `m`) `+ 0.8 x cos(output layer, output layer of the coordinate-wise median)`, shifted by the
#   round's 25th percentile of the scores;
# * credit: both peers of a pair add the mean of their two rows' shifted scores to their
#   reputation (each mixed row carries about half of each peer's update);
# * warm-up (3 rounds at `quick`, 20 at `paper`): the coordinate-wise median of the mixed updates,
#   nobody rejected;
# * selection after the warm-up: candidates whose reputation is below the 25th percentile `Q1` of
#   the candidates' reputations are not selected (at most a quarter of the peers);
# * weighting: `max(0, tanh(R - Q1))`; the median when every weight is 0.
#
# The public repository whose README we follow (`anonymized30/FFL`) does more in its code, which
# we do **not** reproduce: each peer keeps its own reputation of its partners and, after the
# warm-up, refuses to mix with partners in its bottom quartile; only updates that were exchanged are
# aggregated; its score uses `1 - |n - m| / max |n - m|` and `(cos + 1) / 2`, credits each peer with
# its own row's score, and takes `Q1` over all peers. The numbers below are FFL *as we read it*.

# %%
ffl_tables, ffl_configs = {}, {}
for b in benchmarks:
    ffl_configs[b] = study.with_seeds(study.ffl_grid(profile, b, rules=tuple(defenses) if defenses else None,
                                                     **overrides), seeds)
    ffl_tables[b] = study.run_tables(ffl_configs[b], data_root, results_dir, workers=workers)
    ffl = study.ffl_curves(ffl_tables[b])
    print(f"{b}: overall accuracy (%) under Gaussian noise, mean of the last rounds")
    display((100 * ffl[ffl.attack == "gaussian-noise"].pivot_table(
        index="defense", columns="attackers", values="accuracy")).round(1))
    print(f"{b}: Src-Acc, accuracy on the source label (%), under label flipping, mean of the last rounds")
    display((100 * ffl[ffl.attack == "label_flip"].pivot_table(
        index="defense", columns="attackers", values="source_accuracy")).round(1))
    print(f"{b}: FFL's detection (rejected = attacker) over all rounds (%)")
    display((100 * ffl[(ffl.defense == "ffl") & (ffl.attackers > 0)].pivot_table(
        index=["attack", "attackers"],
        values=["detection_accuracy", "detection_precision", "detection_recall", "detection_f1"])).round(1))
    save_figure(plot_ffl(ffl, f"{b} ({profile})"), results_dir, "related", f"ffl_{b}")

# %% [markdown]
# FFL's reputation round by round, Gaussian noise with the most attackers (first benchmark,
# first seed): whether the attackers' reputations fall below every honest peer's
# (`attacker_reputation_max < honest_reputation_min`), how many attackers are still selected, and
# which share of the aggregate's weight sits on attackers' own rows and on honest rows that carry
# half of an attacker's noise after mixing.

# %%
noisy = [c for c in ffl_configs[main] if c.defense == "ffl" and c.attack == "gaussian-noise"
         and c.seed == seeds[0]]
if noisy:  # FFL is in the compared rules
    ffl_trace = study.ffl_trace(max(noisy, key=study.attacker_count), data_root)
    display(ffl_trace.round(3))

# %% [markdown]
# ### What the quick run shows (FFL)
#
# Observed in our quick run (seed 0, CPU); the tables above are recomputed on every execution.
#
# * **Gaussian noise:** FFL holds with 3 attackers of 20 (76.5 % against the median's 77.8 %), not
#   with 6 (62.7 % against 78.6 %); FedAvg collapses (12 %). **Label flipping:** FFL keeps the
#   source class best (Src-Acc 85.3 and 82.4 % with 3 and 6 attackers; median 86.3 and 72.5 %,
#   FedAvg 77.5 and 65.7 %).
# * **The reputation works as we read it:** at the end of the 3-round warm-up every attacker's
#   reputation (at most 0.097) is below every honest peer's (at least 0.142); from round 3 the five
#   lowest peers are left out and the attackers' own rows get weight 0. With 3 attackers, fewer than
#   a quarter of the peers, all of them are left out after the warm-up.
# * **Why FFL falls below the median with 6 attackers:** the bottom quartile is 5 of 20 peers, so
#   1-2 attackers stay selected in every round, and mixing puts half of such an attacker's noise
#   into its honest partner's row, which keeps its weight: 1-10 % of the aggregate's weight sits on
#   such rows (rounds 4, 5, 7, 8), accuracy drops from 62 % (round 3) to 36 % (round 4) and ends at
#   67 %. The 62.7 % is FFL under our reading at 30 % attackers; in the released code peers refuse
#   to mix with partners they rate low, so their rows would not carry that noise (not reproduced).

# %% [markdown]
# ## 2. Loss-based user elimination with local differential privacy
#
# Each peer reports the global model's loss on its own data, clipped to [0, 2], plus Laplace
# noise of scale 2 / epsilon. The server splits the reports with exact 1-D 2-means. **Our rule**
# drops the high-loss cluster only when a separation test says the clusters are apart (false-alarm
# rate at most 0.001 per round with honest peers only, whatever the honest losses' spread:
# Berger and Boos's confidence-set construction, `flhelpers.defenses.user_elimination`). **The
# original's rule** drops the high-loss cluster every round (at most half of the reports), attack
# or not. Detection counts every round, from round 0, when the global model has learnt nothing
# yet. The quick setting (20 peers of 160 images, 14 rounds, lr 0.05, batches of 16) is chosen so
# that the global model learns the attacked class: the reports can only single out a flipper once
# the model assigns its flipped images a high loss. Below the tables, round by round at 30 %
# attackers: for our rule the global model's loss on honest and on attackers' data, the test's
# separation `D` and its threshold (the run is computed again); for the original's rule whom it
# eliminated.

# %%
ratios = tuple(attacker_ratios or study.UE_RATIOS)
ue_configs = study.with_seeds(study.elimination_grid(profile, main, ratios=ratios, **overrides), seeds)
ue = study.run_tables(ue_configs, data_root, results_dir, workers=workers)
print("detection over all rounds (%): eliminated = attacker")
display((100 * ue[ue.defense == "user-elimination"].pivot_table(
    index="label", columns="attacker_ratio", values=["detection_accuracy", "detection_f1"])).round(1))
print("overall accuracy and recall of the attacked (source) label (%), mean of the last rounds")
display((100 * ue.pivot_table(index="label", columns="attacker_ratio", values=["accuracy", "source_recall"])).round(1))
clean = ue[(ue.defense == "user-elimination") & (ue.attacker_ratio == 0)]
print("no attack: honest peer-rounds eliminated (%)")
display((100 * (1 - clean.set_index("label").detection_accuracy)).round(1))
save_figure(plot_elimination_detection(ue, f"{main} ({profile})"), results_dir, "related", "elimination_detection")
save_figure(plot_elimination_effect(ue, f"{main} ({profile})"), results_dir, "related", "elimination_effect")

# %%
traced = min(ratios, key=lambda r: abs(r - 0.3))
top = max(c.defense_kwargs["epsilon"] for c in ue_configs if c.defense == "user-elimination")
at_traced = [c for c in ue_configs if c.defense == "user-elimination" and c.attacker_ratio == traced
             and c.seed == seeds[0] and c.defense_kwargs["epsilon"] == top]
ours = [c for c in at_traced if c.defense_kwargs.get("separation_test", True)][0]
original = [c for c in at_traced if not c.defense_kwargs.get("separation_test", True)][0]
print(f"our rule (eps={top:g}), {traced:.0%} attackers: losses of the global model, D and its threshold per round")
display(study.elimination_trace(ours, data_root).round(2))
print(f"the original rule (eps={top:g}), {traced:.0%} attackers: attackers (tp) and honest peers (fp) eliminated, "
      "recall of the attacked label (%), per round")
display(study.round_table(original, results_dir).assign(source_recall=lambda t: (100 * t.source_recall).round(1))
        .set_index("round")[["tp", "fp", "source_recall"]].T)

# %% [markdown]
# ### What the quick run shows (user elimination)
#
# Observed in our quick run (seed 0, CPU); the tables above are recomputed on every execution.
#
# * **The seed's claim shows with the original's rule** (always drop the high-loss cluster,
#   epsilon 1000): the attacked class's recall stays at 86-91 % at every ratio, where FedAvg falls to
#   75.2 % (30 %) and 28.1 % (40 %); detection F1 71 / 69 / 60 / 47 % at 10 / 20 / 30 / 40 %. Its
#   price: without attack it eliminates 31 % of the honest peer-rounds (accuracy 88.7 % against
#   90.4 %), and in the first rounds, when the model knows nothing, it drops honest peers at random.
# * **Our rule** (the separation test: at most 0.001 false alarms per round; none in the 280 honest
#   peer-rounds without attack) **works at 10-20 %**: recall 87.6 and 90.8 % against FedAvg's 84.3
#   and 85.0 %, every attacker eliminated from round 6 (10 %) or 10 (20 %), once the model knows
#   the class (F1 73 and 44 % over all rounds). **It never fires at 30-40 %**, where its numbers
#   equal FedAvg's. The trace at 30 % says why: the global model, already poisoned by 6 flippers,
#   gives their flipped images little loss, so the attackers' mean loss is at most 0.15 above the
#   honest mean (rounds 8-13) while their own losses spread (each flips only its ~10 % of 7s), and
#   `D` stays at 2.3-4.0 against the threshold 5.71. The original's rule removes 4-6 attackers from
#   round 5 on, before the model is poisoned, so the gap grows (in a 20-round run of this setting it
#   reached `D` = 7.0, above our threshold): our test waits for a gap that a poisoned model no
#   longer shows.
# * **At epsilon 10** (Laplace noise of scale 0.2, a meaningful privacy budget) nobody is eliminated
#   at 40 %: with 20 reports per round the noise hides the attackers' loss gap.
# * Earlier setting (lr 0.1, batches of 64, 20 rounds): the model oscillated at a loss near 0.5,
#   the attackers' losses mixed with the honest ones, and the defense eliminated nobody at 30-40 %
#   (recall 65.1 / 65.1 % and 51.4 / 51.4 % with and without it).

# %% [markdown]
# ## 3. Krum under the inner-product-manipulation attack
#
# From round 10 every attacker sends `-1 x` the mean of the honest updates. The identical
# attacker updates sit at distance 0 from each other, so with enough of them Krum's score
# prefers an attacker's update. 25 peers take part in every round; Krum is told the number of
# attackers. Krum keeps a single peer's update per round, so the quick setting gives each peer
# 200 images and 10 local steps (batches of 20, lr 0.03), where clean Krum is stable.
#
# Columns: `accuracy`, the mean over the last rounds (`final_accuracy`: the last round alone);
# `attacking_rounds`, rounds from round 10 on; `selected_while_attacking`, those in which Krum
# selected an attacker's (poisoned) update; `selected_before_attack`, rounds before 10 in which it
# selected an attacker's update while attackers still sent honest ones (harmless, so the total
# `attacker_selected_rounds` can exceed `attacking_rounds`).

# %%
krum = study.run_tables(study.with_seeds(study.krum_ipm_grid(profile, main, rounds=rounds, device=device), seeds),
                        data_root, results_dir, workers=workers)
display(krum.pivot_table(index="attackers", values=["accuracy", "final_accuracy", "attacking_rounds",
                                                    "selected_while_attacking", "selected_before_attack"]).round(3))
save_figure(plot_krum_ipm(krum, f"{main} ({profile})"), results_dir, "related", "krum_ipm")

# %% [markdown]
# ### What the quick run shows (Krum under IPM)
#
# Observed in our quick run (seed 0, CPU); the table above is recomputed on every execution.
#
# * **Clean Krum is stable and learns:** 84.1 % (mean of the last 5 of 20 rounds; the last round
#   83.4 %). In the earlier setting (100 images per peer, batches of 10, lr 0.05, 15 rounds) one
#   peer's noisy update decided the figure, which plotted the last round alone: the clean run ended
#   at 9.8 % in an earlier version of this notebook and at 33.8 % in our rerun before this change.
# * **Krum holds with few attackers and falls as they grow,** as the related-systems notes report: 84.0 % with 1
#   attacker (never selected), 76.4 % with 3, 62.9 % with 5, 32.1 % with 7, 9.0 % with 11.
# * Krum selects a poisoned update in only 1-4 of the 10 attacked rounds, but one selected
#   `-mean` update undoes several rounds of training (7 attackers: 77 % after round 11, 31 % after
#   round 12). The attackers' identical updates, at distance 0 from each other, win Krum's score in
#   the rounds where the honest updates are spread widely around their mean.
# * `selected_before_attack` (2-5 rounds) counts rounds 0-9, when the attackers still send honest
#   updates; it is why `attacker_selected_rounds` can exceed `attacking_rounds`.

# %%
runs = sum(len(t) for t in ffl_tables.values()) + len(ue) + len(krum)
print(f"Related notebook: {runs} runs and 2 traces, {time.perf_counter() - started:.0f} s")
