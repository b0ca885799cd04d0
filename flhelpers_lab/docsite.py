"""The documentation site's generated pages, and mkdocs's hook that wires them in.

``python -m flhelpers_lab.docsite`` (``make docs`` runs it before ``mkdocs build --strict``) writes
into four git-ignored folders under ``docs/``, from the repository as it is, so that nothing
on those pages is typed by hand:

* ``docs/api/``: one page per public module of ``flhelpers`` and ``flhelpers_lab``, found by
  walking the packages (no list of modules anywhere), each a ``::: module`` block for
  mkdocstrings that renders what the module itself defines;
* ``docs/results/``: Table 3 beside the paper and the shape checks, written by
  ``python -m flhelpers_lab table3`` from a copy of the committed ``medium`` runs, and one page
  of figures per benchmark folder of ``results/reference/medium/figures/``;
* ``docs/notebooks/``: the committed executed ``medium`` notebooks (mkdocs-jupyter renders them
  without executing) and an index of every notebook;
* ``docs/performance/``: the speed scripts' figures and the machine they were measured on
  (``speed/README.md`` and the other pages of ``speed/``, their links re-pointed);
* ``docs/store/``: the committed store's summaries, tables, records and run files, a page of
  every committed run, and the figures drawn here from the store's CSVs, so that a page can
  link to the runs it rests on.

mkdocs's hooks that wire these pages in are :mod:`flhelpers_lab.docsite_hooks`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STORE = ROOT / "results" / "reference" / "medium"
NOTEBOOK_SOURCES = ROOT / "notebooks"
PACKAGES = ("flhelpers", "flhelpers_lab")
#: the generated folders under docs/ (git-ignored); the generator empties and refills them
GENERATED = ("api", "results", "notebooks", "performance", "store")
#: the speed measurements' pages (speed/*.md), copied into docs/performance/
SPEED = ROOT / "speed"
#: the store's files copied into docs/store/ (figures are shown from there too)
STORE_SUFFIXES = (".md", ".csv", ".json", ".png")
#: store folders left out of the copy: binary captures, and files the site shows elsewhere
STORE_SKIP = ("captures", "notebooks")
STORE_SKIP_FILES = ("table3.md", "readme_tables.md")
RUN_ID = re.compile(r"^[0-9a-f]{16}$")
#: a Markdown link or image: ``[text](target "title")``
LINK = re.compile(r"(!?\[(?:[^\[\]]|\[[^\]]*\])*\])\(([^()\s]+)(\s+\"[^\"]*\")?\)")

#: each figure of a benchmark folder: its heading and what it shows, in the order the pages show
#: them (a file not named here comes last, titled by its name)
FIGURE_CAPTIONS = {
    "robustness": ("Robustness", "Src-Acc, ASR and All-Acc of every rule per attacker ratio (the paper's Figs 7-12)."),
    "source_accuracy_rounds": ("Stability", "Src-Acc round by round (the paper's Fig 13)."),
    "src_acc_asr_heatmap": ("Src-Acc and ASR", "Src-Acc and ASR, rule x attacker ratio."),
    "detection": ("Detection", "The share of attackers rejected (TPR) and of honest peers rejected (FPR)."),
    "pca_gradients": ("Gradients through PCA", "The peers' gradients through PCA, attackers marked (the paper's Figs 1, 4-6)."),
    "gradient_magnitudes": ("Gradient magnitudes", "Each output neuron's mean gradient norm over the rounds (the paper's Fig 3)."),
    "runtime": ("Runtime", "Aggregation time per round of every rule on this machine (the paper's Fig 14)."),
    "poisoned_start_sweep": ("Poisoned-start sweep", "Src-Acc after k rounds stepped by the attackers alone ([FoolsGold's trap](../findings/foolsgold-trap.md))."),
    "foolsgold_weight_shares": ("Weight shares", "FoolsGold's and LFighter's weight shares after a poisoned start."),
    "camouflage_curve": ("Camouflage", "LFighter against camouflaged flippers, by the camouflage weight."),
    "lfighter_detection": ("LFighter's detection", "LFighter's TPR and FPR under each attack beyond the paper."),
}
#: the store's figure folders that are not a benchmark of the paper, and their page titles
FIGURE_TITLES = {"beyond": "Beyond the paper (MNIST-Mild)"}


# -- the generator -----------------------------------------------------------------------------

def public_modules(package: str) -> list[str]:
    """Every module of ``package`` whose dotted name has no part starting with ``_``
    (``__init__`` names its package), from the files on disk: nothing is imported."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return sorted(names)


def own_members(module: Any) -> list[str]:
    """The public names a griffe module defines itself (not those it imports, nor submodules)."""
    out = []
    for name, member in module.members.items():
        if name.startswith("_") or member.is_alias or member.is_module:
            continue
        out.append(name)
    return out


def write_api(out: Path) -> list[str]:
    """One page per public module under ``out`` (``api/flhelpers/defenses/lfighter.md``; a
    package is ``.../index.md``) and ``out/index.md``; returns the modules."""
    import griffe

    loaded = {p: griffe.load(p, search_paths=[str(ROOT)], resolve_aliases=False) for p in PACKAGES}
    names = [m for p in PACKAGES for m in public_modules(p)]
    for name in names:
        module = loaded[name.split(".")[0]]
        for part in name.split(".")[1:]:
            module = module.members[part]
        members = own_members(module)
        is_package = (ROOT / name.replace(".", "/")).is_dir()
        page = out / Path(*name.split(".")) / "index.md" if is_package else out / Path(*name.split(".")).with_suffix(".md")
        lines = [f"---\ntitle: {name}\n---\n", f"::: {name}", "    options:",
                 f"      members: {json.dumps(members) if members else 'false'}", ""]
        subs = sorted(m for m in names if m.rsplit(".", 1)[0] == name and m != name)
        if subs:
            lines += ["**Modules**", ""]
            lines += [f"* [`{s}`]({_api_link(name, s, names)}): {_first_line(loaded, s)}" for s in subs]
            lines.append("")
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("\n".join(lines))
    index = ["# API reference", "",
             "Generated from the docstrings: one page per public module, found by walking the two packages "
             "(`python -m flhelpers_lab.docsite`). The library is `flhelpers`; the lab beside it, which runs "
             "the paper's studies on top of the library, is `flhelpers_lab`.", ""]
    for package in PACKAGES:
        index += [f"## `{package}`", "", "| module | what |", "| --- | --- |"]
        for name in (n for n in names if n.split(".")[0] == package):
            index.append(f"| [`{name}`]({_api_path(name, names)}) | {_first_line(loaded, name)} |")
        index.append("")
    (out / "index.md").write_text("\n".join(index))
    return names


def _api_path(name: str, names: list[str]) -> str:
    """The page of module ``name`` relative to ``docs/api/``."""
    parts = name.split(".")
    if any(n.startswith(name + ".") for n in names):
        return "/".join(parts) + "/index.md"
    return "/".join(parts) + ".md"


def _api_link(source: str, target: str, names: list[str]) -> str:
    """A link from the page of ``source`` to the page of ``target``."""
    here = Path(_api_path(source, names)).parent
    return os.path.relpath(_api_path(target, names), here)


def _first_line(loaded: dict, name: str) -> str:
    module = loaded[name.split(".")[0]]
    for part in name.split(".")[1:]:
        module = module.members[part]
    doc = module.docstring.value.strip() if module.docstring else ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    first = re.sub(r":(?:py:)?[a-z]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`", r"`\1`", first).replace("``", "`")
    return first.replace("|", "\\|")


def run_table3(out: Path) -> Path:
    """``python -m flhelpers_lab table3`` over a copy of the committed ``medium`` runs; returns the
    folder holding what it wrote (table3.md, table3.csv, shape_checks.csv, readme_tables.md)."""
    work = Path(tempfile.mkdtemp(prefix="flhelpers-docs-"))
    shutil.copytree(STORE / "runs", work / "runs")
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-m", "flhelpers_lab", "table3", "--profile", "medium",
                           "--results-dir", str(work)], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"python -m flhelpers_lab table3 failed:\n{done.stdout}\n{done.stderr}")
    for name in ("table3.md", "table3.csv", "shape_checks.csv", "readme_tables.md"):
        shutil.copy2(work / name, out / name)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _demote_headings(text: str, levels: int = 1) -> str:
    """Every Markdown heading ``levels`` deeper (outside code fences)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" * levels + line
        lines.append(line)
    return "\n".join(lines)


def write_results(out: Path) -> list[str]:
    """``out/index.md`` (Table 3 beside the paper, the shape checks), ``out/table3.md`` (the
    whole of ``table3.md``) and one page per figure folder of the store; returns the folders."""
    run_table3(out)
    tables = (out / "readme_tables.md").read_text()
    full = (out / "table3.md").read_text()
    intro = ("# Table 3 beside the paper\n\n"
             "Written by `python -m flhelpers_lab table3` from the committed runs of "
             "`results/reference/medium/` each time the site is built: no number on this page is typed by hand. "
             "Ours: the mean of the last 10 rounds at 40 % attackers, seed 0 (IMDB: of its 4 rounds), at the "
             "`medium` profile (the paper's peers, data, model and optimiser, fewer rounds of 1 local epoch). "
             "The paper's: the journal's Table 3, 40 % attackers, after 200 / 100 / 50 rounds of 3 / 3 / 1 epochs. "
             "`lfighter (paper's text)` follows Procedure 1 as the paper writes it, `lfighter (released code)` "
             "what the authors' released code computes ([CIFAR10-Mild and the two LFighters]"
             "(../findings/cifar10-mild.md)).\n\n"
             "The whole table, every cell's difference and the written reason for each cell more than 10 "
             "points from the paper's: [Table 3 in full](table3.md); the reasons' source: "
             "[why a cell is far from the paper's](../findings/table3.md); every committed run: "
             "[the runs](../store/runs.md).\n\n")
    (out / "index.md").write_text(intro + _demote_headings(tables, 1) + "\n")
    (out / "table3.md").write_text(full)
    for name in ("readme_tables.md", "table3.csv", "shape_checks.csv"):
        (out / name).unlink()
    folders = figure_folders()
    for folder in folders:
        (out / f"{folder}.md").write_text(_figures_page(folder))
    write_order(out, ["index.md", "table3.md"] + [f"{f}.md" for f in folders])
    return folders


def figure_folders() -> list[str]:
    """The store's figure folders: the benchmarks in the presets' order, then the others."""
    from flhelpers.config import BENCHMARKS

    found = {p.name for p in (STORE / "figures").iterdir() if p.is_dir()}
    return [b for b in BENCHMARKS if b in found] + sorted(found - set(BENCHMARKS))


#: a generated folder's page order for the nav (one file name a line), read by :func:`_folder_nav`
ORDER_FILE = ".order"


def write_order(folder: Path, names: list[str]) -> None:
    (folder / ORDER_FILE).write_text("\n".join(names) + "\n")


def _figures_page(folder: str) -> str:
    from flhelpers.plots.style import BENCHMARK_TITLES

    title = FIGURE_TITLES.get(folder) or f"{BENCHMARK_TITLES.get(folder, folder)}: figures"
    lines = [f"# {title}", "",
             f"Drawn by the notebooks at the `medium` profile from the committed runs "
             f"(`results/reference/medium/figures/{folder}/`).", ""]
    rank = {name: k for k, name in enumerate(FIGURE_CAPTIONS)}
    for png in sorted((STORE / "figures" / folder).glob("*.png"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem)):
        plain = png.stem.replace("_", " ")
        title, caption = FIGURE_CAPTIONS.get(png.stem, (plain.capitalize(), ""))
        lines += [f"## {title}", "", caption, "", f"![{plain}](../store/figures/{folder}/{png.name})", ""]
    tables = sorted((STORE / "tables").glob(f"{folder}_*.md")) + sorted((STORE / "tables").glob(f"*_{folder}.md"))
    if tables:
        lines += ["## Tables", ""]
        lines += [f"* [`{t.stem}`](../store/tables/{t.name})" for t in tables]
        lines.append("")
    return "\n".join(lines)


def copy_store(out: Path) -> None:
    """The store's small files into ``out`` (same relative paths), a page of every run, and the
    figures drawn here from the store's CSVs."""
    for path in sorted(STORE.rglob("*")):
        rel = path.relative_to(STORE)
        if not path.is_file() or path.suffix not in STORE_SUFFIXES or rel.parts[0] in STORE_SKIP \
                or str(rel) in STORE_SKIP_FILES:
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (out / "runs.md").write_text(runs_page())
    (out / "presets-tables.md").write_text(presets_tables())
    draw_last_batch(out / "last-batch")


#: the columns of the presets' tables: (title, how to show a configuration)
PRESET_COLUMNS = (
    ("peers", lambda c: f"{c.num_peers}"),
    ("training samples", lambda c: f"{c.train_subset:,}" if c.train_subset else "all"),
    ("split", lambda c: c.partition + (f" (alpha {c.dirichlet_alpha:g})" if c.partition == "dirichlet" else "")),
    ("rounds x local epochs", lambda c: f"{c.rounds} x {c.local_epochs}"),
    ("batch", lambda c: f"{c.batch_size}" + (", last dropped" if c.drop_last else "")),
    ("optimizer", lambda c: f"{c.optimizer} lr {c.lr:g}" + (f", momentum {c.momentum:g}" if c.momentum else "")
     + (f", weight decay {c.weight_decay:g}" if c.weight_decay else "")),
    ("attack", lambda c: f"{_class_name(c, c.source_class)} -> {_class_name(c, c.target_class)}"),
)


def _class_name(cfg: Any, k: int) -> str:
    from flhelpers.data.cifar10 import CIFAR10_CLASSES
    from flhelpers.data.imdb import IMDB_CLASSES

    names = {"cifar10": CIFAR10_CLASSES, "imdb": IMDB_CLASSES}.get(cfg.dataset)
    return f"{k} ({names[k]})" if names else str(k)


def presets_tables() -> str:
    """One table per profile, a row per benchmark, read from the presets (``benchmark_config``)."""
    from flhelpers.config import BENCHMARKS, PROFILES, benchmark_config

    out = []
    for profile in PROFILES:
        out += [f"**`{profile}`**", "", "| benchmark | " + " | ".join(t for t, _ in PRESET_COLUMNS) + " |",
                "| --- " * (len(PRESET_COLUMNS) + 1) + "|"]
        for name in BENCHMARKS:
            cfg = benchmark_config(name, profile)
            out.append(f"| `{name}` | " + " | ".join(show(cfg) for _, show in PRESET_COLUMNS) + " |")
        out.append("")
    return "\n".join(out)


def committed_runs() -> dict[str, Path]:
    """Every committed run's folder by its id (``runs/`` and the studies' own ``runs/``)."""
    found = {}
    for path in sorted(STORE.rglob("summary.json")):
        if RUN_ID.match(path.parent.name) and path.parent.parent.name == "runs":
            found[path.parent.name] = path.parent
    return found


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}"


def runs_page() -> str:
    """One row per committed run: its id (an anchor), setting, last-10 Src-Acc and ASR, files."""
    lines = ["# The committed runs", "",
             "Every finished run under `results/reference/medium/`, with the configuration, per-round "
             "metrics and summary it was read from. Src-Acc and ASR: the summary's means of the last 10 "
             "evaluated rounds (%). A run id written in backticks anywhere on this site links to its row.", ""]
    runs = committed_runs()
    groups: dict[str, list[str]] = {}
    for run_id, folder in runs.items():
        groups.setdefault(str(folder.parent.relative_to(STORE)), []).append(run_id)
    for group, ids in sorted(groups.items(), key=lambda g: (g[0] != "runs", g[0])):
        anchor = "runs-" + ("main" if group == "runs" else group.split("/")[0])
        lines += [f"## `{group}/` {{#{anchor}}}", "",
                  "| run | benchmark | defense | attack | seed | rounds | Src-Acc | ASR | files |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run_id in ids:
            folder = runs[run_id]
            cfg = json.loads((folder / "config.json").read_text())["config"]
            summary = json.loads((folder / "summary.json").read_text())
            base = f"{group}/{run_id}"
            files = " ".join(f"[{name}]({base}/{name})" for name in ("config.json", "metrics.csv", "summary.json")
                             if (folder / name).is_file())
            extra = ", ".join(f"{k} {v}" for k, v in sorted({**cfg.get("defense_kwargs", {}),
                                                            **cfg.get("attack_kwargs", {})}.items()))
            if cfg.get("poisoned_rounds"):
                extra = ", ".join(filter(None, [extra, f"poisoned_rounds {cfg['poisoned_rounds']}"]))
            defense = cfg["defense"] + (f" ({extra})" if extra else "")
            lines.append(f"| <a id=\"{run_id}\"></a>`{run_id}` | {cfg['benchmark']} | {defense} | {cfg['attack']}, {100 * cfg['attacker_ratio']:.0f} % | "
                         f"{cfg['seed']} | {summary.get('rounds', '')} | "
                         f"{_pct(summary.get('source_accuracy'))} | {_pct(summary.get('attack_success_rate'))} | "
                         f"{files} |")
        lines.append("")
    return "\n".join(lines)


def draw_last_batch(out: Path) -> None:
    """The last-batch study's two figures, from its committed CSVs: the test loss per round and
    variant, and each peer's local test loss against the size of its short last batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = list(csv.DictReader((STORE / "last-batch" / "rounds.csv").open()))
    variants = list(dict.fromkeys(r["variant"] for r in rounds))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        rows = [r for r in rounds if r["variant"] == variant]
        ax.bar([int(r["round"]) + k * width for r in rows], [float(r["test_loss"]) for r in rows], width,
               label=variant)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in sorted({int(r["round"]) for r in rounds})])
    ax.set_xticklabels([f"round {i}" for i in sorted({int(r["round"]) for r in rounds})])
    ax.set_ylabel("global model's test loss (log)")
    ax.set_title("CIFAR10-Mild FedAvg, 10,000 images: what the short last batch does")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out / "test_loss_by_variant.png", dpi=110)
    plt.close(fig)

    peers = [p for p in csv.DictReader((STORE / "last-batch" / "peers.csv").open()) if p["variant"] == "short batch"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter([int(p["short_batch"]) for p in peers], [float(p["local_test_loss"]) for p in peers])
    ax.set_yscale("log")
    ax.set_xlabel("images in the peer's short last batch")
    ax.set_ylabel("local model's test loss (log)")
    ax.set_title("Round 0: each peer after its local epoch")
    fig.tight_layout()
    fig.savefig(out / "peer_loss_by_short_batch.png", dpi=110)
    plt.close(fig)


def write_notebooks(out: Path) -> list[str]:
    """The committed executed ``medium`` notebooks into ``out`` (each opened by a cell that links
    its figures' pages) and ``out/index.md``; returns their names."""
    import nbformat

    seconds = {}
    timings = STORE / "notebooks" / "timings.csv"
    if timings.is_file():
        seconds = {r["notebook"]: float(r["seconds"]) for r in csv.DictReader(timings.open())}
    found = {p.stem for p in (STORE / "notebooks").glob("*.ipynb")}
    executed = [n for n in seconds if n in found] + sorted(found - set(seconds))
    folders = figure_folders()
    for name in executed:
        nb = nbformat.read(STORE / "notebooks" / f"{name}.ipynb", as_version=4)
        mine = [f for f in folders if f.split("-")[0] == name.lower()]
        links = ", ".join(f"[{f}](../../results/{f}/)" for f in mine)
        note = ("*Executed at the `medium` profile from the committed runs (`results/reference/medium/notebooks/`); "
                "nothing was recomputed.*" + (f" Its figures, one page per benchmark: {links}." if links else ""))
        title_cell = nb.cells[0] if nb.cells and nb.cells[0].cell_type == "markdown" else None
        at = 1 if title_cell is not None else 0
        nb.cells.insert(at, nbformat.v4.new_markdown_cell(note))
        nbformat.write(nb, out / f"{name}.ipynb")
        _warn_unembedded(nb, name)
    lines = ["# Notebooks", "",
             "Every notebook is one job of `make reproduce` (papermill, headless); `make lab` opens them in "
             "JupyterLab. The pages below are the committed notebooks executed at the `medium` profile "
             "(the paper's structure, fewer rounds), rendered as they were saved.", "",
             "| notebook | what it shows | rendered here |", "| --- | --- | --- |"]
    for source in sorted(NOTEBOOK_SOURCES.glob("*.ipynb")):
        nb = nbformat.read(source, as_version=4)
        first = nb.cells[0].source if nb.cells else ""
        title = first.splitlines()[0].lstrip("# ").strip() if first else source.stem
        shown = (f"[{source.stem}]({source.stem}.ipynb) (`medium`, {seconds[source.stem]:.0f} s from the store)"
                 if source.stem in executed and source.stem in seconds else
                 f"[{source.stem}]({source.stem}.ipynb)" if source.stem in executed else
                 "`quick` only: `make reproduce` executes it into `results/notebooks/`")
        lines.append(f"| `notebooks/{source.name}` | {title.replace('|', '/')} | {shown} |")
    lines.append("")
    (out / "index.md").write_text("\n".join(lines))
    write_order(out, ["index.md"] + [f"{n}.ipynb" for n in executed])
    return executed


def _warn_unembedded(nb: Any, name: str) -> None:
    """Say so when a committed notebook shows figures as text (``<Figure size ...>``) rather than
    images: its kernel ran a non-inline matplotlib backend (``MPLBACKEND=Agg`` reached it)."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    as_text = sum(1 for o in outputs if str(o.get("data", {}).get("text/plain", "")).startswith("<Figure size"))
    images = sum(1 for o in outputs if "image/png" in o.get("data", {}))
    if as_text and not images:
        print(f"note: {name}.ipynb shows its {as_text} figures as text (<Figure size ...>), not images; its "
              "kernel ran matplotlib's Agg backend. Its figures are on the results pages.", file=sys.stderr)


def write_performance(out: Path) -> None:
    """``speed/README.md`` as ``out/index.md`` and every other page of ``speed/`` beside it, each
    relative link re-pointed from ``speed/`` to the same file seen from ``out``."""
    pages = {p: (out / ("index.md" if p.name == "README.md" else p.name.lower().replace("_", "-")))
             for p in sorted(SPEED.glob("*.md"))}
    names = {p.name: q.name for p, q in pages.items()}

    def repoint(m: re.Match) -> str:
        text, target, title = m.group(1), m.group(2), m.group(3) or ""
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        if path in names:
            new = names[path]
        else:
            new = os.path.relpath(os.path.normpath(SPEED / path), out)
        return f"{text}({new}{'#' + anchor if anchor else ''}{title})"

    for source, target in pages.items():
        target.write_text(LINK.sub(repoint, source.read_text()))


def generate(docs: Path = DOCS) -> dict[str, int]:
    """Empty and refill the generated folders; returns how many pages each holds."""
    for name in GENERATED:
        shutil.rmtree(docs / name, ignore_errors=True)
        (docs / name).mkdir(parents=True)
    write_api(docs / "api")
    copy_store(docs / "store")
    write_results(docs / "results")
    write_notebooks(docs / "notebooks")
    write_performance(docs / "performance")
    counts = {name: sum(1 for p in (docs / name).rglob("*") if p.suffix in (".md", ".ipynb")) for name in GENERATED}
    (docs / "store" / ".generated").write_text(json.dumps(counts))
    return counts


def main(argv: list[str] | None = None) -> int:
    counts = generate()
    print("generated under docs/: " + ", ".join(f"{k}/ {v} pages" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
