"""Command line: ``fedticket run``, ``fedticket deploy`` and ``fedticket compare``."""

from __future__ import annotations

import argparse
import errno
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from fedticket.environment import MAX_THREADS, env_threads
from fedticket.errors import FedticketError, FedticketWarning, MachineError
from fedticket.spec import BASELINE


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``fedticket: error: argument --jobs: ...``)."""

    def error(self, message: str) -> Any:  # argparse's own: usage block, then the error
        if message.startswith("argument ") and ": " in message:  # "argument --jobs: ..."
            name, why = message[len("argument "):].split(": ", 1)
            message = f"{name.split('/')[-1]} {why}"
        print(f"fedticket: error: {one_line(message)} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (an argument or a file name may hold
    a newline), so that an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _whole(low: int, high: int = 2**31 - 1) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:  # not a number, or more digits than Python converts
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:20]!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        if n > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {str(n)[:20]}")
        return n

    parse.__name__ = "whole number"
    return parse


def _number(ok: Any, what: str) -> Any:
    """An argparse type: a finite number for which ``ok(x)`` holds (``what`` says which)."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text[:20]!r}") from None
        if not (math.isfinite(x) and ok(x)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text[:20]}")
        return x

    parse.__name__ = "number"
    return parse


_positive_seconds = _number(lambda x: x > 0, "a number of seconds > 0")
_accuracy = _number(lambda x: 0 < x <= 1, "an accuracy in (0, 1]")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fedticket",
        description="Server-side unsupervised lottery tickets for cheap federated learning.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def experiment(cmd: argparse.ArgumentParser, out_help: str) -> None:
        cmd.add_argument("config", help="experiment TOML file (see configs/)")
        cmd.add_argument("--out", default="runs", help=out_help)
        cmd.add_argument("--seed", type=_whole(0), action="append",
                         help="run this seed instead of the config's seeds (repeatable)")
        cmd.add_argument("--method", action="append",
                         help="run this method instead of the config's methods (repeatable)")
        cmd.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config value, e.g. --set federate.rounds=5 "
                              "(repeatable)")

    r = sub.add_parser("run", help="run every method and seed of one experiment config")
    experiment(r, "results directory (default: runs/)")
    r.add_argument("--quiet", action="store_true", help="print no progress")
    r.add_argument("--threads", type=_whole(0, MAX_THREADS), default=0,
                   help="torch threads (default: torch's own, or cores / jobs with --jobs); "
                        "results can differ in the last digits between thread counts")
    r.add_argument("--jobs", type=_whole(1), default=1,
                   help="run the runs in this many processes, the cores split between them "
                        "(default: 1)")
    r.add_argument("--workers", type=_whole(1),
                   help="processes that train a run's clients, one torch thread each "
                        "(default: cores / jobs; jobs x workers may not exceed the cores)")

    d = sub.add_parser("deploy", help="run the config's methods on a local Flower deployment "
                                      "(one SuperLink, one SuperNode per client partition)")
    experiment(d, "results directory (default: runs/)")
    d.add_argument("--nodes", type=_whole(1),
                   help="number of SuperNodes (must equal data.num_clients; default: that)")
    d.add_argument("--tls", action="store_true",
                   help="TLS with a throwaway CA, and SuperNode authentication")
    d.add_argument("--threads", type=_whole(0, MAX_THREADS), default=0,
                   help="torch threads per Flower process (default: cores / nodes, at least 1)")
    d.add_argument("--min-replies", type=_whole(1), default=1,
                   help="a round with fewer usable replies stops the run (default: 1)")
    d.add_argument("--round-timeout", type=_positive_seconds, default=600.0,
                   help="seconds to wait for a round's replies (default: 600)")
    d.add_argument("--quiet", action="store_true", help="print no progress")

    a = sub.add_parser("flower-app", help="write a Flower app folder and one run config per "
                                          "method and seed, for `flwr run` on any federation")
    experiment(a, "results directory on the SuperLink's machine; give an absolute path "
                  "(default: runs/)")
    a.add_argument("--dir", required=True, help="folder to write (pyproject.toml, run-*.toml)")
    a.add_argument("--threads", type=_whole(0, MAX_THREADS), default=0,
                   help="torch threads in the ServerApp and ClientApps (default: torch's own; "
                        "a node's --node-config threads=N wins)")

    st = sub.add_parser("study", help="run the reproduction study's grid (resumable), "
                                      "summarise it and print its tables and verdict")
    st.add_argument("study", help="study TOML file (configs/study.toml)")
    st.add_argument("--out", default="runs", help="results directory (default: runs/)")
    st.add_argument("--quick", action="store_true", help="the study file's small [quick] grid")
    st.add_argument("--jobs", type=_whole(1), default=1, help="processes, the cores split between "
                                                       "them (default: 1)")
    st.add_argument("--workers", type=_whole(1),
                    help="processes that train a run's clients (default: cores / jobs)")
    st.add_argument("--summary", help="where to write the JSON summary (default: "
                                      "OUT/STUDY/summary.json)")
    st.add_argument("--plots", help="also draw the study's figures into this folder")
    st.add_argument("--partition", action="append", default=[],
                    help="run only this partition (repeatable); the summary covers every "
                         "partition with finished runs")
    st.add_argument("--doc", help="also put the rendered tables into this markdown file, "
                                  "between <!-- BEGIN/END SUMMARY-NAME --> markers")
    st.add_argument("--quiet", action="store_true", help="print no progress")
    st.add_argument("--probe-tolerance", type=_number(lambda x: x >= 0, "a fraction >= 0"),
                    help="how far apart (relative) the speed probes of two paired runs may "
                         "be (default 0.6, from the probe's spread here); the summary "
                         "records it")

    c = sub.add_parser("compare", help="compare the finished runs in a results directory")
    c.add_argument("dir", help="results directory written by `fedticket run`")
    c.add_argument("--target", type=_accuracy,
                   help="target test accuracy (default: 95%% of the baseline's best accuracy)")
    c.add_argument("--baseline", default=BASELINE, help="method savings are measured against")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    c.add_argument("--markdown", action="store_true", help="print the table as GitHub markdown")
    c.add_argument("--plots", help="where to write the PNG plots (default: DIR/plots)")
    c.add_argument("--no-plots", action="store_true", help="do not write plots")
    c.add_argument("--links", metavar="PROFILE",
                   help="also model each run's wall-clock time to the target on a link and "
                        "device profile (constrained, mobile, wifi, mixed; or FILE.toml:NAME)")
    c.add_argument("--overhead-s", type=float, default=0.0,
                   help="--links: the framework's own seconds per round (default 0)")

    e = sub.add_parser("export", help="write the final global model of a finished run as "
                                      "ONNX or safetensors (docs/export.md)")
    e.add_argument("run_dir", help="a finished run folder written by `fedticket run`")
    e.add_argument("--format", dest="fmt", metavar="FORMAT",
                   help="onnx or safetensors (default: from the --out suffix)")
    e.add_argument("--out", required=True, help="file to write; its folder must exist")
    e.add_argument("--full-size", action="store_true",
                   help="export the full-size model even when the mask removes whole units "
                        "(default: the compact model then)")
    return p


def _specs(args: argparse.Namespace) -> list:
    from fedticket.spec import METHODS, load_config, parse_set

    config = load_config(args.config)
    if args.seed:
        config = replace(config, seeds=tuple(dict.fromkeys(args.seed)))
    if args.method:
        for m in args.method:
            if m not in METHODS:
                raise FedticketError(f"unknown method {m!r}; choose from: {', '.join(METHODS)}")
        config = replace(config, methods=tuple(dict.fromkeys(args.method)))
    return config.specs(parse_set(args.set))


def _set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _run(args: argparse.Namespace) -> int:
    from fedticket.runner import run_parallel

    if args.jobs > 1 and args.threads:
        raise FedticketError("--jobs splits the cores itself; leave out --threads")
    _set_threads(args.threads)
    specs = _specs(args)
    stream = None if args.quiet else sys.stderr
    out = Path(args.out)
    folders = run_parallel(specs, out, args.jobs, stream, args.workers)
    for f in folders:
        print(f)
    return 0


def _flower(command: str) -> ModuleType:
    """``fedticket.flower.deploy``, or a one-line error when Flower is not installed."""
    try:
        from fedticket.flower import deploy
    except ImportError as e:
        raise FedticketError(f"fedticket {command} needs Flower ({e.name} is missing); "
                             "install it with: pip install 'fedticket[flower]'") from e
    return deploy


def _deploy(args: argparse.Namespace) -> int:
    flower = _flower("deploy")
    _set_threads(args.threads)
    specs = _specs(args)
    stream = None if args.quiet else sys.stderr
    folders = flower.deploy(specs, Path(args.out), nodes=args.nodes, tls=args.tls,
                     threads=args.threads or None, stream=stream, min_replies=args.min_replies,
                     round_timeout_s=args.round_timeout)
    for f in folders:
        print(f)
    return 0


def _flower_app(args: argparse.Namespace) -> int:
    flower = _flower("flower-app")
    specs = _specs(args)
    folder = flower.write_app(Path(args.dir))
    print(folder / "pyproject.toml")
    for spec in specs:
        print(flower.run_config_file(folder / f"run-{spec.method}-s{spec.seed}.toml", spec,
                              Path(args.out), args.threads, resolve=False))
    return 0


def _study(args: argparse.Namespace) -> int:
    from fedticket.report.study_render import render, update_doc
    from fedticket.study import load_study, plot_summary, run_study, summarize, write_summary

    study = load_study(args.study, quick=args.quick)
    out = Path(args.out)
    folder = run_study(study, out, args.jobs, None if args.quiet else sys.stderr,
                       tuple(args.partition), args.workers)
    summary = summarize(study, folder, args.probe_tolerance)
    default = ("summary.json" if study.folder_name == study.name
               else f"{study.name}.summary.json")
    path = Path(args.summary) if args.summary else out / study.folder_name / default
    write_summary(summary, path)
    if args.doc:
        update_doc(Path(args.doc), path)
    if args.plots:
        for p in plot_summary(summary, Path(args.plots)):
            print(f"figure: {p}", file=sys.stderr)
    print(render(summary))
    print(f"summary: {path}")
    return 0


def provenance(runs: list) -> dict:
    """Where compared runs came from: each run's commit (``+dirty`` with local changes)
    and versions, and the commit that compared them."""
    from fedticket.io import git_commit

    def commit(run: Any) -> str:
        git = run.spec.get("git") or {}
        return f"{str(git.get('commit'))[:10]}{'+dirty' if git.get('dirty') else ''}"

    return {"runs": {r.name: commit(r) for r in runs},
            "versions": sorted({json.dumps(r.spec.get("versions", {}), sort_keys=True)
                                for r in runs}),
            "compared_at": git_commit()}


def _compare(args: argparse.Namespace) -> int:
    from fedticket.report import (
        compare,
        format_layers,
        format_table,
        layers_markdown,
        load_runs,
        plot,
        to_markdown,
    )

    if args.target is not None and not 0.0 < args.target <= 1.0:
        raise FedticketError(f"--target is an accuracy in (0, 1], got {args.target}")
    profile = None
    if args.links:
        from fedticket.report.links import compare_times, format_times, load_profile

        profile = load_profile(args.links, args.overhead_s)
    runs = load_runs(args.dir)
    result = compare(runs, target=args.target, baseline=args.baseline)
    times = (None if profile is None else
             compare_times(runs, result["target"], profile, args.baseline))
    written: list[Path] = []
    if not args.no_plots:
        out = Path(args.plots) if args.plots else Path(args.dir) / "plots"
        out.mkdir(parents=True, exist_ok=True)
        written = plot(runs, out, target=result["target"])
    if args.json:
        from fedticket.report.table import layer_fractions

        print(json.dumps(result | {"layers": layer_fractions(runs),
                                   "provenance": provenance(runs)}
                         | ({} if times is None else {"links": times}), allow_nan=False))
    else:
        print(to_markdown(result) if args.markdown else format_table(result))
        if any(r.layers for r in runs):
            print()
            print(layers_markdown(runs) if args.markdown else format_layers(runs))
        if times is not None:
            print()
            print(format_times(times))
        for p in written:
            print(f"plot: {p}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedticket.export import FORMATS, describe, export_run

    fmt = args.fmt
    if fmt is None:
        fmt = Path(args.out).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise FedticketError(f"cannot tell the format from --out {args.out}; give "
                                 f"--format ({' or '.join(FORMATS)})")
    print(describe(export_run(Path(args.run_dir), fmt, Path(args.out),
                              compact=not args.full_size)))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, ``timeout``): stop as Ctrl-C does, cleaning up on
    the way out (timing records, Flower processes), then exit with 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    for child in multiprocessing.active_children():  # --jobs workers: gone with us
        child.terminate()
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a refused argument (2, its line printed)
        return e.code if isinstance(e.code, int) else 2
    if threading.current_thread() is not threading.main_thread():  # handlers: main only
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """fedticket's warnings as one line on stderr; any other as Python prints it."""
    if issubclass(category, FedticketWarning):
        print(f"fedticket: warning: {one_line(str(message))}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def _main(args: argparse.Namespace) -> int:
    warnings.showwarning = _show_warning
    try:
        env_threads()  # a bad FEDTICKET_THREADS is refused here, not in a Flower process
        if args.command == "run":
            return _run(args)
        if args.command == "deploy":
            return _deploy(args)
        if args.command == "flower-app":
            return _flower_app(args)
        if args.command == "study":
            return _study(args)
        if args.command == "export":
            return _export(args)
        return _compare(args)
    except (FedticketError, MachineError) as e:
        print(f"fedticket: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: stop quietly, as other CLI tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as e:
        why = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"fedticket: {why}; finished run folders are kept, and the unfinished "
              "one keeps its last checkpoint: run the same command to resume",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # the one boundary: the user's world, or a bug of ours
        said = explain(e)
        if said is None:
            return _bug(e)
        message, status = said
        print(f"fedticket: error: {one_line(message)}", file=sys.stderr)
        return status


# errno values that mean the machine failed, not the input: the run keeps its checkpoint
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO,
                            errno.ENOMEM, errno.EMFILE, errno.ENFILE})
_RESUME = "the unfinished run keeps its last checkpoint: run the same command to resume"


def explain(e: BaseException) -> tuple[str, int] | None:
    """One line and an exit status for an error that comes from the user's files,
    arguments, environment or machine, or None if ``e`` is a bug of fedticket's. The
    loaders name their file where they can; this is the net under them."""
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e) or type(e).__name__
        if e.errno in MACHINE_ERRNOS:
            fix = ("make the folder writable" if e.errno == errno.EROFS
                   else "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                   else "fix the cause")
            return f"{where}{what}; {fix}: {_RESUME}", 1
        if isinstance(e, (IsADirectoryError, NotADirectoryError, FileExistsError)):
            return f"{where}{what}: a path is in the way; move it or pick another", 2
        if isinstance(e, PermissionError):
            return f"{where}{what}: fedticket may not read or write it", 2
        if isinstance(e, FileNotFoundError):
            return f"{where}{what}", 2
        return f"{where}{what} ({type(e).__name__})", 1
    if isinstance(e, UnicodeError):
        return f"a file that should be UTF-8 text is not ({e})", 2
    if isinstance(e, RecursionError):
        return "an input is nested too deeply to read (a config or JSON file?)", 2
    if isinstance(e, MemoryError):
        return f"out of memory; {_RESUME}", 1
    if isinstance(e, (zipfile.BadZipFile, EOFError)):
        return f"a damaged or truncated file ({type(e).__name__}: {e})", 2
    return None


def _bug(e: BaseException) -> int:
    """An exception nobody expected: say it is a bug, and keep its traceback in a log."""
    text = "".join(traceback.format_exception(e))
    try:
        fd, log = tempfile.mkstemp(prefix="fedticket-bug-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"fedticket {' '.join(sys.argv[1:])}\n{text}")
        where = f"its traceback is in {log}"
    except OSError:
        sys.stderr.write(text)
        where = "its traceback is above"
    print(f"fedticket: internal error, this is a bug: {type(e).__name__}: {one_line(str(e))}; "
          f"{where}; please report it with that traceback", file=sys.stderr)
    return 3

if __name__ == "__main__":
    sys.exit(main())
