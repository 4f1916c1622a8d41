"""Command line: `anobench run|report|compare|status|synth|export-maps|predict|rescore`.

The only place that prints errors and calls sys.exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from anobench.errors import AnobenchError, is_storage_error, storage_error

log = logging.getLogger("anobench")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
LOG_HANDLER = "anobench-console"  # the handler main() installs; Hydra sets up its own


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(err: BaseException, debug: bool, command: str = "run") -> int:
    """Print a user error as one line (the traceback first when debugging); exit code 2."""
    console = _stderr()
    if debug:
        console.print("".join(traceback.format_exception(err)), markup=False)
        hint = ""
    else:
        switch = "debug=true" if command == "run" else f"anobench --debug {command}"
        hint = f" [dim]({switch} shows the traceback)[/]"
    console.print(f"[bold red]error:[/] {escape(str(err))}{hint}", soft_wrap=True)
    return EXIT_USER_ERROR


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the current cell stops and finished ones stay."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise _Terminated


def run_from_config(cfg: DictConfig) -> int:
    """Plan, run and summarise one `anobench run` (one Hydra job); returns the exit code."""
    from anobench.report import print_run_table
    from anobench.runlog import run_log
    from anobench.runner import plan_run, run_cells

    debug = bool(cfg.get("debug", False))
    try:
        plan = plan_run(cfg)
        if cfg.dry_run:
            from anobench.planning import print_plan

            print_plan(plan, Console())
            return 0
        with run_log(plan.results_dir) as log_file:
            log.info("results go under %s (log: %s)", plan.results_dir, log_file or "none")
            summary = run_cells(plan)
            log.info(
                "%d cell(s) run, %d finished before, %d held by other runs, %d failed; "
                "results are under %s",
                len(summary.done),
                len(summary.skipped),
                len(summary.busy),
                len(summary.failed),
                plan.results_dir,
            )
    except AnobenchError as err:
        return _fail(err, debug)
    except OSError as err:
        if not is_storage_error(err):
            raise
        return _fail(storage_error(err), debug)
    if not _in_multirun():  # a sweep prints one table of all its cells at its end
        print_run_table(plan.results_dir, plan.cells, Console())
    for cell, message in summary.failed.items():  # the runner logged it to the run log only
        _stderr().print(f"[bold red]failed:[/] {cell.label()}: {message}", soft_wrap=True)
    return summary.exit_code


def _run(args: Sequence[str]) -> int:
    import hydra

    from anobench.config import CONF_SEARCH_PATH, register_configs
    from anobench.overrides import check_run, run_arguments, with_user_config_dir
    from anobench.sweeps import register_launcher_configs

    register_configs()
    register_launcher_configs()
    args = with_user_config_dir(list(args))
    ns = run_arguments(args)
    if ns.help:
        from anobench.overrides import run_help

        Console().print(run_help(ns), markup=False, highlight=False, soft_wrap=True)
        return 0
    sweeps: list[Path] = []
    if ns.multirun:
        from anobench.sweeps import expand_multirun

        args, sweeps = expand_multirun(args)
    elif not (ns.hydra_help or ns.shell_completion):
        check_run(ns)
    codes: list[int] = []

    @hydra.main(config_path=CONF_SEARCH_PATH, config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> None:
        code = run_from_config(cfg)
        codes.append(code)
        if code != 0 and _in_multirun():
            # a launcher in another process only learns of failures through an exception
            raise RuntimeError(f"anobench job failed with exit code {code}")

    _detach_console_log()
    saved_argv = sys.argv
    sys.argv = ["anobench run", *args]
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        task()
    except SystemExit as exit_:
        # Hydra exits 1 after printing a composition or validation error
        if exit_.code not in (0, None):
            return EXIT_USER_ERROR
    finally:
        sys.argv = saved_argv
        signal.signal(signal.SIGTERM, previous)
        if sweeps:
            from anobench.sweeps import print_sweep_tables

            print_sweep_tables(sweeps, Console())
    return max(codes, default=0)


def _detach_console_log() -> None:
    """Hand logging to Hydra, which adds its own handlers (else `--info` prints twice)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == LOG_HANDLER]:
        root.removeHandler(handler)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _report(ns: argparse.Namespace) -> int:
    from anobench.report import report_command

    return report_command(ns)


def _compare(ns: argparse.Namespace) -> int:
    from anobench.compare import compare_command

    return compare_command(ns)


def _status(ns: argparse.Namespace) -> int:
    from anobench.sweeps import status_command

    return status_command(ns)


def _synth(ns: argparse.Namespace) -> int:
    from anobench.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(
        image_size=ns.image_size,
        n_train=ns.n_train,
        n_test_good=ns.n_test_good,
        n_test_defect=ns.n_test_defect,
        seed=ns.seed,
    )
    out = generate(Path(ns.out), spec, progress=True)
    Console().print(f"wrote synthetic MVTec-layout data to {out}")
    return 0


def _export_maps(ns: argparse.Namespace) -> int:
    from anobench.export import export_run_maps

    count = export_run_maps(Path(ns.results_dir), Path(ns.out))
    Console().print(f"wrote {count} TIFF maps under {ns.out}")
    return 0


def _predict(ns: argparse.Namespace) -> int:
    from anobench.predict import predict_command

    return predict_command(ns)


def _rescore(ns: argparse.Namespace) -> int:
    from anobench.rescore import rescore_command

    return rescore_command(ns)


def _add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The cell, the selectors picking one cell of a results folder, and the device."""
    parser.add_argument("cell", help="a cell folder, or a results folder with the selectors below")
    group = parser.add_argument_group("which cell of a results folder")
    group.add_argument("--dataset", default=None)
    group.add_argument("--method", default=None, help="knn (any variant) or knn+<variant>")
    group.add_argument("--backbone", default=None)
    group.add_argument("--category", default=None)
    group.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda:N")


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="score new images with a cell's kept model")
    _add_cell_arguments(predict)
    predict.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    predict.add_argument("--out", required=True, help="folder for maps/, overlays/, scores.csv")
    predict.add_argument(
        "--threshold",
        default=None,
        help="a number, f1 (the test set's F1-max threshold) or fpr:0.05 (5%% of good images)",
    )
    predict.add_argument(
        "--mask-threshold", type=float, default=None, help="map value for the masks (a number)"
    )
    predict.add_argument("--batch-size", type=int, default=None, help="default: the cell's")
    predict.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default=None, help="default: the cell's"
    )
    predict.add_argument("--weights", default=None, help="the backbone weights file, if moved")
    predict.set_defaults(handler=_predict)

    rescore = sub.add_parser(
        "rescore", help="a cell's metrics with other scoring settings, from its kept model"
    )
    _add_cell_arguments(rescore)
    rescore.add_argument("overrides", nargs="+", help="KEY=VALUE, e.g. method.image_score=max")
    rescore.add_argument("--overwrite", action="store_true", help="recompute a rescored cell")
    rescore.set_defaults(handler=_rescore)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anobench",
        description="Benchmark unsupervised visual anomaly detection on MVTec AD.",
        epilog="`anobench run --help`: Hydra options; `anobench run --cfg job`: the config.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="train and evaluate (Hydra overrides follow)", add_help=False)

    report = sub.add_parser("report", help="aggregate results into paper-style tables")
    report.add_argument("results_dir", nargs="?", default="results")
    report.add_argument(
        "--out", default=None, help="folder for CSV/Markdown/LaTeX (default: results_dir)"
    )
    report.add_argument("--figures", action="store_true", help="also write PNG figures")
    report.add_argument("--status", action="store_true", help="list done/failed/missing cells")
    report.add_argument("--ci", action="store_true", help="show 95%% intervals: 97.9 [96.8, 98.7]")
    report.add_argument(
        "--by-defect", action="store_true", help="also tables per defect type (defects_*)"
    )
    report.add_argument(
        "--html", action="store_true", help="also write report.html (self-contained)"
    )
    report.set_defaults(handler=_report)

    compare = sub.add_parser(
        "compare", help="compare two results (CSV or folder); exit 1 on regression"
    )
    compare.add_argument("baseline", help="results.csv of anobench report, or a results folder")
    compare.add_argument("candidate", help="results.csv of anobench report, or a results folder")
    compare.add_argument("--metric", action="append", default=None)
    compare.add_argument("--tolerance", type=float, default=0.5, help="allowed drop in points")
    compare.add_argument(
        "--stat", action="store_true", help="fail only on significant drops beyond the tolerance"
    )
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level (--stat)")
    compare.add_argument(
        "--resamples", type=int, default=1000, help="paired bootstrap resamples (--stat)"
    )
    compare.add_argument("--format", choices=("table", "md", "json"), default="table")
    compare.set_defaults(handler=_compare)

    status = sub.add_parser("status", help="done, failed and missing cells of a results folder")
    status.add_argument("results_dir", nargs="?", default="results")
    status.set_defaults(handler=_status)

    synth = sub.add_parser("synth", help="write the synthetic MVTec-layout dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--n-train", type=int, default=40)
    synth.add_argument("--n-test-good", type=int, default=10)
    synth.add_argument("--n-test-defect", type=int, default=20)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    export = sub.add_parser(
        "export-maps", help="write anomaly maps as TIFF for the MVTec evaluator"
    )
    export.add_argument("results_dir", help="a results folder (or one cell folder)")
    export.add_argument("--out", required=True)
    export.set_defaults(handler=_export_maps)
    _add_model_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `anobench` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _attach_console_log()
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        if argv and argv[0] == "run":
            return _run(argv[1:])
        ns = _parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = ns.handler
        return handler(ns)
    except KeyboardInterrupt:
        _stderr().print("interrupted: finished cells are saved; rerun the same command to resume")
        return EXIT_INTERRUPTED
    except (AnobenchError, OSError) as err:
        if isinstance(err, OSError) and not is_storage_error(err):
            raise
        error = storage_error(err) if isinstance(err, OSError) else err
        return _fail(error, _debug(argv, command), command)


def _attach_console_log() -> None:
    """INFO messages to stderr unless logging is set up already (as logging.basicConfig)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.set_name(LOG_HANDLER)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _debug(argv: list[str], command: str) -> bool:
    if command == "run":
        from anobench.overrides import debug_requested

        return debug_requested(argv)
    return "--debug" in argv
