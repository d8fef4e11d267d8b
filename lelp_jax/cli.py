"""The ``lelp`` command.

    lelp run     --config configs/digits_binary.py --workdir /tmp/lelp [--config.a.b=VALUE ...]
                 [--methods ce,kd,lelp] [--seeds 0,1,2] [--force] [--quiet] [--verbose]
    lelp teacher | outputs | stats | fit | distill | eval   (same options; each runs
                 the stages it needs first, skipping those already done)
    lelp config  --config FILE [--config.a.b=VALUE ...]    print the resolved config
    lelp report  ...                                        (lelp_jax.report.main)
    lelp sweep   ...                                        (lelp_jax.protocol.sweep.main)
    lelp kfold   ...                                        (lelp_jax.protocol.kfold.main)
    lelp export  WORKDIR [--method M] [--seed K] [--out DIR]   (lelp_jax.student.export.main)
    lelp predict --student DIR --input FILE [--out PREDS.csv] (lelp_jax.student.predict.main)

A subcommand is a function ``(argv: list[str]) -> int`` in ``COMMANDS``. User
errors (bad config key, missing checkpoint, foreign workdir, dataset not
available, a truncated artifact, a full or read-only disk) print one ``lelp: error: ...`` line and exit
with status 2, without a traceback (``--debug`` shows it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from lelp_jax import pipeline, report
from lelp_jax.protocol import kfold, paired, sweep
from lelp_jax.student import export as student_export
from lelp_jax.student import predict as student_predict
from lelp_jax.runtime import sharding
from lelp_jax.config import config_to_dict, load_config
from lelp_jax.runtime.errors import ConfigError, find_os_error, os_error_message
from lelp_jax.config.overrides import override_dict, split_overrides
from lelp_jax.runtime.sharding import enable_compilation_cache

__all__ = ["main", "COMMANDS", "STAGE_COMMANDS", "split_overrides", "build_parser", "enable_compilation_cache"]

# Subcommand -> the pipeline stages it runs, in order (prerequisites included; done ones skip).
STAGE_COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("teacher", "teacher_outputs", "statistics", "fit", "distill", "eval"),
    "teacher": ("teacher", "teacher_outputs"),
    "outputs": ("teacher", "teacher_outputs"),
    "stats": ("teacher", "teacher_outputs", "statistics"),
    "fit": ("teacher", "teacher_outputs", "statistics", "fit"),
    "distill": ("teacher", "teacher_outputs", "statistics", "fit", "distill"),
    "eval": ("eval",),
}

_STAGE_HELP = {
    "run": "the whole experiment: teacher, statistics, fit, distill every method x seed, results.json",
    "teacher": "train (or load) the teacher; writes WORKDIR/teacher/",
    "outputs": "cache the teacher's embeddings and logits (teacher_cache=True)",
    "stats": "per-class moments of the teacher embeddings; writes statistics.npz",
    "fit": "fit the LELP projections; writes projections.npz",
    "distill": "train students: one run per method x seed under WORKDIR/runs/",
    "eval": "collect finished runs into WORKDIR/results.json",
}


def _stage_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"lelp {name}",
        description=_STAGE_HELP.get(name, ""),
        allow_abbrev=False,
        epilog="Override any config key with --config.SECTION.KEY=VALUE (lists: 1,2,4; bools: true/false).",
    )
    p.add_argument("--config", required=True, help="config file (configs/NAME.py) or a config name")
    p.add_argument("--workdir", required=name != "config", help="folder for every artifact of this experiment")
    p.add_argument("--methods", help="comma-separated methods, e.g. ce,kd,lelp (overrides config.methods)")
    p.add_argument("--seeds", help="comma-separated student seeds, e.g. 0,1,2 (overrides config.seeds)")
    p.add_argument("--force", action="store_true", help="delete this workdir's artifacts and start over")
    p.add_argument("--quiet", action="store_true", help="no per-stage progress lines")
    p.add_argument("--verbose", action="store_true",
                   help="also show library warnings (absl, tfds dataset preparation lines)")
    return p


def quiet_library_warnings(verbose: bool) -> None:
    """Unless ``verbose``: the 'absl' logger (tfds's "Using custom data configuration" and the like)
    shows errors only, which also hides tfds's preparation lines and bars (lelp_jax.data.builders)."""
    import logging

    logging.getLogger("absl").setLevel(logging.NOTSET if verbose else logging.ERROR)


def _load(args: argparse.Namespace, overrides: list[str]):
    return load_config(args.config, overrides, methods=args.methods, seeds=args.seeds)


def _print(quiet: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if quiet:
            return
        import jax

        if jax.process_index() == 0:
            print(msg, flush=True)

    return log


def _run_stages(name: str, argv: Sequence[str]) -> int:
    rest, overrides = split_overrides(argv)
    args = _stage_parser(name).parse_args(rest)
    quiet_library_warnings(args.verbose)
    # Everything that can fail on user input is checked before JAX starts or the workdir changes.
    config = _load(args, overrides)
    if not args.force:
        pipeline.check_workdir(config, args.workdir)
    sharding.initialize_distributed(config.distributed)
    run = pipeline.Run(config, args.workdir)  # what preflight loads (data, a precomputed teacher) serves the stages too
    pipeline.preflight(run, force=args.force, data=name != "eval")
    enable_compilation_cache()
    log = _print(args.quiet)
    t0 = time.perf_counter()
    pipeline.run_stages(
        config,
        args.workdir,
        stages=STAGE_COMMANDS[name],
        force=args.force,
        overrides=override_dict(config, overrides),
        log=log,
        run=run,
        command=f"lelp {name}",
    )
    log(f"[{name}] all done in {time.perf_counter() - t0:.1f} s; workdir {args.workdir}")
    if name == "run":
        for line in paired_lines(config, args.workdir):
            log(line)
        if jax_process_index() == 0:
            out, chosen = student_export.export_student(args.workdir)  # the best on validation, never on test
            log(student_export.usage_line(out, chosen))
    return 0


def paired_lines(config, workdir: str | os.PathLike) -> list[str]:
    """``lelp run``'s last lines: each method's paired test-accuracy difference (best-validation step) to ``kd``
    and ``ce``, d_s = acc_method(s) - acc_ref(s) over the seeds both ran, as mean [95 % t-interval] in points
    (:func:`lelp_jax.protocol.paired.paired_table`): one seed's accuracy cannot order methods, a paired interval
    can. Only this config's methods and seeds count; nothing without 2 seeds or without kd or ce."""
    results = json.loads(pipeline.Workdir(workdir).results.read_text())
    seeds = {int(s) for s in config.seeds}
    runs = [r for r in results["runs"] if r["method"] in config.methods and int(r["seed"]) in seeds]
    acc = paired.per_seed(runs)
    if len(seeds) < 2 or not {"kd", "ce"} & set(acc):
        return []
    return ([f"[paired] test accuracy % (best-validation step), paired by seed over seeds {sorted(seeds)}; "
             "Δ = method - reference in points, 95 % t-interval:"]
            + paired.paired_table(acc, references=("kd", "ce")))


def jax_process_index() -> int:
    """This JAX process's index (0 on one host): only process 0 writes the exported student."""
    import jax

    return jax.process_index()


def _cmd_config(argv: Sequence[str]) -> int:
    rest, overrides = split_overrides(argv)
    args = _stage_parser("config").parse_args(rest)
    config = _load(args, overrides)
    print(json.dumps(config_to_dict(config), indent=2))
    return 0


def _main_of(module) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        rc = module.main(list(argv))
        return 0 if rc is None else int(rc)

    return run


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    **{name: (lambda argv, _n=name: _run_stages(_n, argv)) for name in STAGE_COMMANDS},
    "config": _cmd_config,
    "report": _main_of(report),
    "sweep": _main_of(sweep),
    "kfold": _main_of(kfold),
    "export": _main_of(student_export),
    "predict": _main_of(student_predict),
}

_COMMAND_HELP = {
    **_STAGE_HELP,
    "config": "print the resolved config (file + overrides) and exit",
    "report": "tables and plots from results.json files",
    "sweep": "run a grid of overrides (e.g. lelp.beta, lelp.num_subclasses) over shared teachers",
    "kfold": "run every fold of a k-fold config (data.num_folds) and pool the folds' test sets",
    "export": "write a finished student (best on validation) as a self-contained bundle",
    "predict": "class predictions of an exported student for a .csv/.jsonl/.npz file",
}


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser (for --help): the subcommand and its arguments."""
    lines = "\n".join(f"  {n:<9} {_COMMAND_HELP.get(n, '')}" for n in COMMANDS)
    p = argparse.ArgumentParser(
        prog="lelp",
        description="Few-class knowledge distillation (LELP and baselines) in JAX.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\nRun `lelp COMMAND --help` for a command's options.",
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def _workdir_of(argv: Sequence[str]) -> str | None:
    """The ``--workdir`` of a command line (named in a disk error whose file is unknown)."""
    for i, a in enumerate(argv):
        if a == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lelp`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LELP_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lelp: error: unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except SystemExit as e:  # argparse's own usage errors (already printed)
        return int(e.code) if isinstance(e.code, int) else 2
    except (ConfigError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"lelp: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a disk error (full, read-only, no permission), however wrapped
        disk = find_os_error(e)
        if disk is None and not isinstance(e, ValueError):
            raise
        if debug:
            raise
        msg = os_error_message(disk, _workdir_of(rest)) if disk is not None else str(e)
        print(f"lelp: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lelp: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
