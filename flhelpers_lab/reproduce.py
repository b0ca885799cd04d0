"""Run the benchmark notebooks headless with papermill (``make reproduce``).

    python -m flhelpers_lab reproduce --profile quick            # all six notebooks, minutes
    python -m flhelpers_lab reproduce --profile medium           # the benchmark notebooks over the
                                                             # committed reference runs
    python -m flhelpers_lab reproduce --profile paper --notebooks MNIST   # the paper's scale

Each notebook ``notebooks/<NAME>.ipynb`` is executed with its parameters cell overridden by
``profile``, ``results_dir``, ``data_root`` and ``device`` (plus any ``parameters``); the
executed copy goes to ``<results_dir>/notebooks/<NAME>.ipynb`` and the wall time of each to
``<results_dir>/notebooks/timings.csv`` (one row per notebook and profile, the latest run). Figures and tables are written by the notebooks
themselves (``<results_dir>/figures``, ``<results_dir>/tables``). Finished runs are reused, so
a second call only re-draws.

At ``medium`` the results store defaults to ``results/medium``, which is first seeded with the
committed reference runs of ``results/reference/medium`` (:func:`flhelpers_lab.store.prepare_results_store`):
the three benchmark notebooks read every run back instead of computing it, and ``table3.csv`` /
``table3.md`` are written beside them. A run the committed store does not have yet (a row still
being computed) is listed and left out (``only_finished``), since computing it takes hours:
``compute_missing=True`` (``--compute-missing``) computes it, ``force=True`` recomputes everything. The committed folder is
never written unless ``refresh_reference=True`` (``--refresh-reference``) makes it the store.
The Related and Privacy notebooks have no medium profile; ``--notebooks Beyond --profile medium``
draws the Beyond study's medium runs that are finished in the store.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from flhelpers.config import PROFILES
from flhelpers.data.base import DATA_ENV, resolve_data_root
from flhelpers.results import atomic_write_csv

NOTEBOOKS = ("MNIST", "CIFAR10", "IMDB")
#: what ``make reproduce`` runs: the benchmark notebooks, then the related systems, privacy, and the
#: attacks beyond the paper
ALL_NOTEBOOKS = NOTEBOOKS + ("Related", "Privacy", "Beyond")
#: the notebooks with a medium profile (Beyond only when asked for: its medium runs are not all committed)
MEDIUM_NOTEBOOKS = NOTEBOOKS + ("Beyond",)
_OWN_KERNEL = "flhelpers-python"


def notebooks_dir() -> Path:
    """``notebooks/`` of the working directory, else the one beside the installed package."""
    for candidate in (Path.cwd() / "notebooks", Path(__file__).resolve().parents[1] / "notebooks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("No notebooks/ folder found: run from the repository root (where "
                            "notebooks/MNIST.ipynb is) or reinstall flhelpers in editable mode.")


def resolve_notebooks(names: Sequence[str] | None, folder: Path) -> list[Path]:
    """The notebook files for ``names`` (case-insensitive, with or without ``.ipynb``; default all)."""
    available = {p.stem.lower(): p for p in folder.glob("*.ipynb")}
    wanted = list(names) if names else list(ALL_NOTEBOOKS)
    out = []
    for name in wanted:
        key = Path(name).stem.lower()
        if key not in available:
            raise ValueError(f"Unknown notebook {name!r}; available in {folder}: "
                             f"{', '.join(sorted(p.stem for p in available.values()))}.")
        out.append(available[key])
    return out


def _runs_this_python(argv0: str) -> bool:
    """True when a kernelspec's ``argv[0]`` starts the interpreter running this code.

    jupyter_client replaces a bare ``python``/``python3``/``python3.X`` with ``sys.executable``.
    """
    bare = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    if argv0 in bare:
        return True
    try:
        return Path(argv0).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


def kernel_manager_class() -> type | None:
    """The kernel manager papermill starts the notebooks' kernel with: jupyter_client's, with
    CurveZMQ transport encryption provisioned when the kernelspec supports it (``"auto"``).

    ipykernel >= 7.3 warns at every start of a kernel reached over plain TCP ("Kernel is running
    over TCP without encryption"); with the keys the kernel is encrypted and quiet. ``None`` (the
    default manager) for a jupyter_client without the ``transport_encryption`` setting.
    """
    from jupyter_client.manager import AsyncKernelManager

    if "transport_encryption" not in AsyncKernelManager.class_trait_names():
        return None

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return EncryptedKernelManager


def ensure_kernel() -> str:
    """A kernel name whose kernel runs this interpreter (so it can import flhelpers).

    ``python3`` when it resolves to this interpreter (ipykernel installed here provides it);
    otherwise a kernelspec ``flhelpers-python`` is installed into ``sys.prefix`` (the virtual
    environment, no admin rights needed) and used.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    for name in ("python3", _OWN_KERNEL):
        try:
            spec = manager.get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if spec.argv and _runs_this_python(spec.argv[0]):
            return name
    try:
        from ipykernel.kernelspec import install
    except ImportError as exc:  # pragma: no cover - ipykernel is a dependency
        raise RuntimeError("ipykernel is not installed in this environment: pip install ipykernel") from exc
    install(kernel_name=_OWN_KERNEL, display_name="Python (flhelpers)", prefix=sys.prefix)
    return _OWN_KERNEL


def notebook_path(path: Path, kernel_cwd: Path, repository: Path) -> str:
    """``path`` as a notebook parameter: relative to the kernel's folder when it lies in the
    repository (so executed notebooks carry no machine's absolute paths), else absolute."""
    path = path.resolve()
    if path.is_relative_to(repository.resolve()):
        return os.path.relpath(path, kernel_cwd.resolve())
    return str(path)


def notebook_parameters(profile: str, results: Path, data_root: str | Path | None, device: str,
                        kernel_cwd: Path, force: bool = False,
                        parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters papermill injects: ``profile``, ``results_dir``, ``device``, ``data_root``
    unless it comes from ``$FLHELPERS_DATA`` (the kernel inherits the variable), ``force`` when
    set, then ``parameters``. Paths inside the repository are relative to ``kernel_cwd``."""
    from flhelpers_lab.store import repository_root

    repo = repository_root()
    params: dict[str, Any] = {"profile": profile, "results_dir": notebook_path(results, kernel_cwd, repo),
                              "device": device}
    if data_root is not None or not os.environ.get(DATA_ENV):
        params["data_root"] = notebook_path(resolve_data_root(data_root), kernel_cwd, repo)
    if force:
        params["force"] = True
    return {**params, **(parameters or {})}


def medium_parameters(profile: str, force: bool, compute_missing: bool,
                      parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """``parameters`` with ``only_finished=True`` at ``medium`` unless ``force`` or ``compute_missing``
    (or ``parameters`` sets ``only_finished`` itself): re-drawing the committed results must not
    start hours of training for a row that is still being computed."""
    if profile != "medium" or force or compute_missing:
        return parameters
    return {"only_finished": True, **(parameters or {})}


def write_timings(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Merge this call's rows into ``timings.csv``: a notebook run again at a profile replaces its row."""
    if path.is_file():
        old = pd.read_csv(path)
        keep = ~old.set_index(["notebook", "profile"]).index.isin(rows.set_index(["notebook", "profile"]).index)
        rows = pd.concat([old[keep], rows], ignore_index=True)
    atomic_write_csv(path, rows)
    return rows


@contextmanager
def inline_figures() -> Iterator[None]:
    """Let the notebooks' kernels embed their figures.

    A kernel inherits this process's environment; ``MPLBACKEND=Agg`` (set by CI and by headless
    shells) makes matplotlib draw nowhere, so the executed notebooks kept ``<Figure size ...>``
    text instead of the images. Inside this block ``MPLBACKEND`` is unset (the kernel then uses
    its inline backend); the old value is restored on leaving.
    """
    old = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if old is not None:
            os.environ["MPLBACKEND"] = old


def reproduce(profile: str = "quick", notebooks: Sequence[str] | None = None,
              results_dir: str | Path | None = None, data_root: str | Path | None = None, device: str = "cpu",
              parameters: dict[str, Any] | None = None, log_output: bool = False, force: bool = False,
              refresh_reference: bool = False, compute_missing: bool = False) -> int:
    """Execute the benchmark notebooks with papermill; return 0 when every one succeeded, else 1.

    Args:
        profile: ``quick`` (minutes on 2 CPU cores), ``medium`` (the paper's structure, fewer
            rounds; committed reference results) or ``paper`` (the paper's scale).
        notebooks: names among ``MNIST``, ``CIFAR10``, ``IMDB``, ``Related``, ``Privacy``, ``Beyond``
            (default all six; at ``medium`` the three benchmark notebooks).
        results_dir: the results store; executed notebooks go to ``<results_dir>/notebooks``
            (default :func:`flhelpers_lab.store.default_results_dir`: ``results``, or
            ``results/medium`` at ``medium``). At ``medium`` it is first seeded with the committed
            runs it lacks.
        data_root: the data root (default ``$FLHELPERS_DATA``, which the kernel inherits, else
            ``./data`` of the working directory); a path inside the repository is passed relative
            to ``notebooks/``, the kernel's working directory (:func:`notebook_parameters`).
        device: ``cpu`` or ``cuda``.
        parameters: further notebook parameters (e.g. ``{"rounds": 2}``), overriding the above.
        log_output: stream the notebooks' output to this process's output.
        force: recompute every run of the notebooks' grids even where a finished one exists.
        refresh_reference: at ``medium``, use the committed folder ``results/reference/medium``
            itself as the store (rewrites its executed notebooks, figures, tables and timings).
        compute_missing: at ``medium``, compute the runs the store lacks (hours each); without it
            (and without ``force``) the notebooks draw the finished runs and list the others
            (:func:`medium_parameters`).

    Raises:
        ValueError: an unknown profile or notebook, a notebook without a medium profile,
            ``refresh_reference`` with ``results_dir`` or at a profile without committed results,
            or ``compute_missing`` away from ``medium`` or with ``only_finished``.
    """
    from flhelpers_lab.store import REFERENCE_PROFILES, reference_dir, prepare_results_store
    from flhelpers_lab.table3 import write_table3

    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    if profile == "medium" and notebooks is None:
        notebooks = list(NOTEBOOKS)
    sources = resolve_notebooks(notebooks, notebooks_dir())
    if profile == "medium":
        no_medium = [s.stem for s in sources if s.stem not in MEDIUM_NOTEBOOKS]
        if no_medium:
            raise ValueError(f"The {', '.join(no_medium)} notebook(s) have no medium profile; run them with "
                             f"--profile quick or paper, or leave them out.")
    if compute_missing and profile != "medium":
        raise ValueError(f"--compute-missing is for the medium redraw; at {profile!r} missing runs are "
                         f"always computed: leave it out.")
    if compute_missing and (parameters or {}).get("only_finished"):
        raise ValueError("--compute-missing and --only-finished contradict each other: give one.")
    if refresh_reference:
        if profile not in REFERENCE_PROFILES:
            raise ValueError(f"--refresh-reference rewrites committed results, which exist only for "
                             f"{', '.join(REFERENCE_PROFILES)}; leave it out at {profile!r}.")
        if results_dir is not None:
            raise ValueError("--refresh-reference writes into results/reference/: leave out --results-dir.")
        results_dir = reference_dir(profile)
    results = Path(prepare_results_store(results_dir, profile, force=force))
    out_dir = results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = medium_parameters(profile, force, compute_missing, parameters)
    params = notebook_parameters(profile, results, data_root, device, notebooks_dir(), force, parameters)
    kernel, manager = ensure_kernel(), kernel_manager_class()
    rows, failed = [], []
    with inline_figures():  # the kernels embed their figures
        for src in sources:
            target = out_dir / src.name
            print(f"[reproduce] {src.stem} ({profile} profile) -> {target}", flush=True)
            t0 = time.perf_counter()
            status = "ok"
            try:
                pm.execute_notebook(str(src), str(target), parameters=params, kernel_name=kernel,
                                    cwd=str(src.parent), progress_bar=False, log_output=log_output,
                                    **({"kernel_manager_class": manager} if manager else {}))
            except pm.PapermillExecutionError as exc:
                status = f"failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
                failed.append(src.stem)
            seconds = time.perf_counter() - t0
            print(f"[reproduce] {src.stem}: {status} ({seconds / 60:.1f} min)", flush=True)
            rows.append({"notebook": src.stem, "profile": profile, "seconds": round(seconds, 1), "status": status})
    write_timings(out_dir / "timings.csv", pd.DataFrame(rows))
    if profile == "medium":
        write_table3(results, profile)
        print(f"[reproduce] Table 3 beside the paper: {results / 'table3.md'}")
    if failed:
        print(f"[reproduce] failed: {', '.join(failed)}; open {out_dir} to see the failing cell.", file=sys.stderr)
        return 1
    print(f"[reproduce] done: figures in {results / 'figures'}, tables in {results / 'tables'}")
    return 0


__all__ = ["ALL_NOTEBOOKS", "MEDIUM_NOTEBOOKS", "NOTEBOOKS", "ensure_kernel", "kernel_manager_class", "medium_parameters",
           "notebook_parameters", "notebook_path",
           "notebooks_dir", "reproduce", "resolve_notebooks", "write_timings"]
