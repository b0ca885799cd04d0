# %% [markdown]
# # Beyond the paper: flippers that know the defense, and a backdoor
#
# The paper, its code and the FL poisoning libraries we know test LFighter only against the attacker it was
# designed for: every attacker flips all of its source-class labels, on one source-target pair, in every round.
# This notebook asks what it takes to get past LFighter and the other rules. Every attack is a
# registered name of `flhelpers.attacks` (its module docstring gives its definition and source):
#
# * **partial flipping** (`partial-flip`, `q`): each attacker flips only a share `q` of its source-class samples;
# * **two pairs at once** (`multi-pair-flip`): 7 -> 1 and 3 -> 8 split among the attackers (half carry each;
#   at `medium` also both carried by every attacker), which breaks Procedure 1's assumption that the two largest
#   output neurons are the source and the target;
# * **when to attack** (`timed-flip`): each round with probability `p`, or only from round `R0` on;
# * **camouflage** (`camouflage-flip`, `lam`): the attacker also trains on its true labels and sends the
#   clean update's output layer weighted `lam` (the flipped update elsewhere);
# * **backdoor** (`backdoor`, BadNets, Gu et al. 2017): a 4 x 4 white patch in the bottom-right corner on half
#   of an attacker's images, relabelled 1; at `medium` also with model replacement (Bagdasaryan et al. 2020).
#   Its metric is the backdoor ASR: the share of triggered test images (not of class 1) predicted as 1.
#
# **Scale.** `quick` (the default, `make reproduce`): MNIST-Mild's quick preset (20 peers, 15 rounds, 8,000
# images, one local epoch, lr 0.05), 40 % attackers, FedAvg and LFighter against every flip (the median against the
# paper's flip and two pairs), and FedAvg, the median, Multi-Krum, FLAME and LFighter against the backdoor: a few
# minutes on 2 CPU cores, and numbers to read as a sketch.
# `medium`: MNIST-Mild's medium preset (100 peers, 40 rounds), 30 % and 40 %, all seven rules; it
# reads the runs committed under `results/reference/medium/` (`only_finished=True` draws those already there).
# Compute them with `python -m flhelpers_lab.beyond --profile medium` (hours on 2 cores; finished runs are
# skipped, so it can be stopped and started again), then draw them with
# `python -m flhelpers_lab reproduce --notebooks Beyond --profile medium`.

# %% [markdown]
# ## Parameters
#
# Papermill overrides this cell (`-p name value`). `None` means: the profile's default.

# %% tags=["parameters"]
profile = "quick"        # "quick" (minutes on 2 CPU cores) or "medium" (committed reference runs)
benchmarks = None        # the study runs MNIST-Mild only; kept for the runner's common parameters
defenses = None          # None: the profile's plan; a list replaces both the flips' and the backdoor's rules
attacker_ratios = None   # None: the profile's plan ([0.4] at quick, [0.3, 0.4] at medium)
seeds = [0]              # one run per seed; tables average over seeds
device = "cpu"           # "cpu" or "cuda"
data_root = None         # None: $FLHELPERS_DATA, else ./data
results_dir = None       # runs, records, figures, tables; None: results/reference/medium at medium, else results
rounds = None            # override the profile's number of training rounds
peers = None             # override the profile's number of peers
config_overrides = {}    # any other ExperimentConfig field for every run, e.g. {"train_subset": 2000}
workers = 2              # processes for the runs (2 suits a 2-core machine; 1: in this kernel)
force = False            # recompute every run even where a finished one exists
only_finished = None     # draw only the runs already finished (None: True at medium, False otherwise)

# %%
import dataclasses
import warnings

import pandas as pd
from IPython.display import Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm falls back to text bars

from flhelpers_lab.plots.beyond import plot_attack_heatmap, plot_camouflage_curve, plot_lfighter_detection
from flhelpers.plots.style import show
from flhelpers_lab import beyond
from flhelpers_lab.store import default_results_dir
from flhelpers.results.tables import write_table

results_dir = str(results_dir or default_results_dir(profile))
only_finished = (profile == "medium") if only_finished is None else only_finished
plan = beyond.beyond_plan(profile)
if defenses is not None:
    plan = dataclasses.replace(plan, flip_defenses=tuple(defenses), backdoor_defenses=tuple(defenses), extra_runs=())
if attacker_ratios is not None:
    plan = dataclasses.replace(plan, ratios=tuple(attacker_ratios))
overrides = dict(rounds=rounds, num_peers=peers, device=device, **config_overrides)
runs = beyond.planned_runs(plan, seeds, **overrides)
if only_finished:
    runs = beyond.only_finished_runs(runs, results_dir)
RATIO = max(plan.ratios)
TITLE = f"MNIST-Mild ({profile})"
pd.set_option("display.precision", 1)
display(Markdown(f"**Plan:** {plan.note}; {len(runs)} runs."))
pd.DataFrame([{"key": r.key, "attack": r.config.attack, "arguments": r.config.attack_kwargs,
               "defense": r.config.defense, "attackers": f"{r.config.attacker_ratio:.0%}"} for r in runs])

# %% [markdown]
# ## 1. The runs
#
# Finished runs are reused; LFighter's runs also write their per-round record (which neurons Procedure 1
# clustered on, whom it rejected) to `<results>/records/<run-id>.csv`. The two runs without attackers (FedAvg)
# measure the clean model's per-pair Src-Acc and ASR and its backdoor ASR: the no-attack column of every table.

# %%
rows = beyond.run_beyond(runs, data_root, results_dir, workers=workers, force=force) if runs else pd.DataFrame()
print(f"{len(rows)} runs, {int((~rows['reused']).sum()) if len(rows) else 0} computed")

# %% [markdown]
# ## 2. Defense x attack heatmaps, each beside its no-attack value
#
# Rows: the rules; columns: the attacks, the first column the clean model's value (FedAvg, no attackers). Src-Acc
# of the flipped source class (both pairs under two pairs), the matching ASR, and the backdoor ASR. Mean of the
# last 10 rounds, as the paper reports.

# %%
tables = {}
for kind in ("src", "asr", "backdoor"):
    for ratio in plan.ratios:
        if len(rows):
            tables[kind, ratio] = beyond.attack_table(rows, plan, kind, ratio)
            write_table(tables[kind, ratio], results_dir, f"beyond_{kind}_{int(round(ratio * 100))}", digits=1)
            show(plot_attack_heatmap(tables[kind, ratio], kind, f"{TITLE}, {ratio:.0%} attackers"), results_dir,
                 "beyond", f"heatmap_{kind}_{int(round(ratio * 100))}")

# %% [markdown]
# ## 3. LFighter's detection per attack
#
# True positive rate (attackers' updates rejected) and false positive rate (honest updates rejected), summed over
# every round. An attacker that sits a round out (`p = 0.5`, before `R0`) sends an honest update there, and counts
# as a miss.

# %%
if len(rows):
    detection = beyond.lfighter_detection(rows, plan)
    write_table(detection, results_dir, "beyond_lfighter_detection", digits=1)
    show(plot_lfighter_detection(detection, TITLE), results_dir, "beyond", "lfighter_detection")
    display(detection)

# %% [markdown]
# ## 4. The camouflage trade-off
#
# Against LFighter at the highest ratio, as the weight `lam` of the clean update on the output layer grows: the
# ASR the attackers reach and the share of their updates LFighter rejects. `lam = 0` is the paper's flipper.

# %%
if len(rows):
    curve = beyond.camouflage_curve(rows, plan)
    write_table(curve, results_dir, "beyond_camouflage_curve", digits=1)
    show(plot_camouflage_curve(curve, f"{TITLE}, {RATIO:.0%} attackers"), results_dir, "beyond", "camouflage_curve")
    display(curve.rename(index=lambda lam: f"{lam:g}"))  # 0.25, not the display precision's 0.2

# %% [markdown]
# ## 5. A mend of LFighter, kept as an option
#
# Where two pairs get past Procedure 1 (it looks at the two largest neurons only), `LFighter(passes=2)` runs
# Procedure 1 a second time on the peers it kept, on their own two largest neurons, and drops that pass's bad
# cluster too (it stops when a pass would look at neurons seen before, or keep half of the peers or fewer). The
# paper's rule stays the default. Beside the original on the same attacks: the pairs' Src-Acc and ASR, the
# detection rates, and the cost (a second k-means a round, and honest peers rejected when there is no second pair).

# %%
if len(rows):
    mend = beyond.mend_table(rows, plan)
    write_table(mend, results_dir, "beyond_lfighter_mend", digits=1)
    display(mend)

# %% [markdown]
# ## 6. Rules that swing between two states
#
# A rule whose per-round detection alternates: rounds in which it rejects at least 90 % of the attackers, and
# rounds in which it keeps at least 90 % of them (and rejects honest peers instead). Its last-10 mean then
# averages a clean and a poisoned model. Counted from round 5 (or the attack's start), from each run's
# `metrics.csv`; `flame-swing/summary.md` (`python -m flhelpers_lab study flame-swing`) measures the update
# geometry behind FLAME's swing under the flip.

# %%
if len(rows):
    swinging = beyond.swing_table(rows, plan, results_dir, RATIO)
    if swinging.empty:
        display(Markdown(f"No rule swings at {RATIO:.0%} attackers in these runs."))
    else:
        write_table(swinging, results_dir, f"beyond_swings_{int(round(RATIO * 100))}", digits=1)
        display(swinging)

# %% [markdown]
# ## 7. Findings
#
# Written from the numbers above and LFighter's records: a rule *holds* when its Src-Acc (the worse pair under
# two pairs) is at most 10 points below the clean model's, or its backdoor ASR at most 10 points above it.

# %%
if len(rows):
    closing = beyond.defense_attack_table(rows, plan, RATIO)
    write_table(closing, results_dir, f"beyond_defense_x_attack_{int(round(RATIO * 100))}", digits=1)
    display(Markdown(f"**Defense x attack at {RATIO:.0%} attackers** (Src-Acc % for flips, the worse pair for two "
                     f"pairs; backdoor ASR % for backdoors; last row: the clean model)"))
    display(closing)
    notes = beyond.findings(rows, plan, results_dir, RATIO)
    beyond.write_findings(notes, results_dir)
    display(Markdown("\n\n".join(f"* {n}" for n in notes)))
