"""The `newsdl` command line (SPEC section 3).

Heavy imports (TensorFlow, pandas, pyarrow) happen inside the commands, so that `--help`,
`--version` and bad usage answer at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from newsdl import __version__, defaults
from newsdl.errors import UserError

app = typer.Typer(
    name="newsdl",
    help="Deep learning on news articles: ingest -> featurize -> train -> evaluate.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion: bash, zsh, fish and PowerShell complete commands and choices
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder [default: $NEWSDL_WORKSPACE or ./newsdl-work]")


def _setup_logging(verbose: bool) -> None:
    from newsdl.progress import interactive

    fmt = "%(message)s" if interactive() else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr,
                        force=True)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "gensim", "smart_open"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:  # tf.function's retracing advice is for the package's authors, not its users
        for noisy in ("tensorflow", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"newsdl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging, and tracebacks on errors."),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version."),
) -> None:
    _state["verbose"] = verbose
    if not verbose:
        # TensorFlow's C++ notices would bury our own log lines, its ERROR-level ones included:
        # "failed call to cuInit" on every machine without a GPU, oneDNN's AVX-512 note. A real
        # failure raises in Python and is reported as such. --verbose is the way to see them.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _setup_logging(verbose)


def _ws(path: Optional[Path]) -> Path:
    from newsdl.workspace import resolve

    return resolve(path)


@app.command()
def ingest(
    inputs: List[Path] = typer.Argument(..., help="Article files: .jsonl, .jsonl.gz, .json, .csv or .parquet"),
    workspace: Optional[Path] = WorkspaceOpt,
    images_root: Optional[Path] = typer.Option(None, help="Folder that image paths are relative to [default: the first input's folder]"),
    map: List[str] = typer.Option([], "--map", metavar="NEW=OLD",
                                  help="Take the article field NEW from the input's OLD (repeatable); either side "
                                  "may be a dotted path into nested objects: --map text=body.content, "
                                  "--map geo.lat=location.latitude"),
    strict: bool = typer.Option(False, "--strict", help="Stop with exit 2 at the first bad record or image"),
    force: bool = typer.Option(False, "--force", help="Redo the stage even if it is up to date"),
) -> None:
    """Validate and normalise articles into WORKSPACE/ingest/."""
    from newsdl.ingest.run import ingest as run_ingest, parse_mapping

    mapping = parse_mapping(map)  # a bad --map fails before the inputs are hashed
    result = run_ingest(inputs, _ws(workspace), images_root=images_root, mapping=mapping, strict=strict,
                        force=force)
    for line in ingest_summary(result.counts, result.folder, result.skipped):
        typer.echo(line)


def ingest_summary(c: dict, folder: Path, skipped: bool) -> list[str]:
    """What ingest did, in sentences: counts, the reasons for rejects, the splits."""
    state = "up to date, nothing done" if skipped else "done"
    lines = [f"ingest {state}: {c['records_read']:,} records read: {c['accepted']:,} accepted, "
             f"{c['rejected']:,} rejected; images: {c['images_accepted']:,} accepted, "
             f"{c['images_rejected']:,} rejected"]
    for reason, n in {**c["rejected_by_reason"], **c["images_rejected_by_reason"]}.items():
        lines.append(f"  rejected {n:>7,}  {reason}")
    if c["rejected"] or c["images_rejected"]:
        lines.append(f"  reasons, record by record: {folder / 'rejected.jsonl'}")
    from newsdl.ingest.schema import SPLITS

    order = [s for s in SPLITS if s in c["splits"]] + sorted(set(c["splits"]) - set(SPLITS))
    splits = ", ".join(f"{c['splits'][s]:,} {s}" for s in order) or "none"
    lines.append(f"  splits: {splits}  ->  {folder}")
    return lines


@app.command("sample-corpus")
def sample_corpus(
    out: Path = typer.Argument(..., help="Folder to write articles.jsonl and images/ into"),
    articles: int = typer.Option(defaults.SAMPLE_ARTICLES, "--articles", "-n", help="Number of articles"),
    seed: int = typer.Option(defaults.SEED, help="Random seed"),
    images: bool = typer.Option(True, "--images/--no-images", help="Draw image files (--no-images: text only)"),
) -> None:
    """Write the embedded BreakingNews-shaped sample corpus."""
    from newsdl.sample.corpus import write_corpus

    if articles < 1:
        raise UserError(f"--articles {articles}: must be at least 1")
    summary = write_corpus(out, n_articles=articles, seed=seed, images=images)
    typer.echo(f"wrote {summary['articles']} articles and {summary['images']} images to {out}")


@app.command()
def demo(
    workspace: Optional[Path] = WorkspaceOpt,
    articles: int = typer.Option(defaults.SAMPLE_ARTICLES, "--articles", "-n", help="Number of sample articles"),
    seed: int = typer.Option(defaults.SEED, help="Random seed"),
    force: bool = typer.Option(False, "--force", help="Redo every stage"),
) -> None:
    """Generate the sample corpus and run every stage on it, ending with a table of metrics."""
    from newsdl.demo import run_demo

    if articles < 20:
        raise UserError(f"--articles {articles}: the demo needs at least 20 articles to split and train")
    run_demo(_ws(workspace), n_articles=articles, seed=seed, force=force)


@app.command()
def status(workspace: Optional[Path] = WorkspaceOpt,
           as_json: bool = typer.Option(False, "--json", help="One JSON object: the stages and the jobs.")) -> None:
    """Each stage of the workspace: done, incomplete or pending."""
    import json

    from newsdl.hpc.status import job_rows
    from newsdl.status import stage_states

    ws = _ws(workspace)
    if not ws.is_dir():
        raise UserError(f"-w {ws}: no such workspace folder")
    stages = stage_states(ws)
    jobs = job_rows(ws)  # jobs that `newsdl submit` recorded, as the scheduler sees them
    if as_json:
        typer.echo(json.dumps({"workspace": str(ws), "stages": stages, "jobs": jobs}))
        return
    typer.echo(f"workspace {ws}")
    for row in stages:
        typer.echo(f"  {row['stage']:<10} {row['state']:<11} {row['detail']}")
    if jobs:
        typer.echo(f"jobs ({ws / 'jobs' / 'jobs.json'})")
    for row in jobs:
        typer.echo(f"  {row['stage']:<20} {row['state']:<9} job {row['job_id']}: {row['detail']}")


@app.command()
def doctor() -> None:
    """Versions, GPU visibility, compiled ops, HPC schedulers, Java and cached weights on this machine."""
    from newsdl.doctor import report

    for key, value in report():
        typer.echo(f"{key:<26} {value}")


def _register_stages() -> None:
    from newsdl.features import cli as features_cli
    from newsdl.ops import cli as ops_cli
    from newsdl.tasks import cli as tasks_cli

    ops_cli.register(app)
    features_cli.register(app)
    tasks_cli.register(app)
    from newsdl.hpc import cli as hpc_cli

    hpc_cli.register(app)


_register_stages()


class _QuietTensorFlowImport:
    """Send fd 2 to /dev/null while `import tensorflow` runs.

    On a machine without CUDA, the GPU wheel's C++ layer writes "Could not find cuda drivers"
    notices straight to fd 2 as it loads, whatever TF_CPP_MIN_LOG_LEVEL says; they would bury
    the one-line errors and logs of every command. Import errors still raise as usual.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            from newsdl.progress import fd2_hidden

            with fd2_hidden():
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors exit 2 with one line; --verbose shows tracebacks."""
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)[:3]
    if not verbose and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    try:
        app(args=argv, prog_name="newsdl")
    except UserError as exc:
        if verbose:
            raise
        typer.echo(f"newsdl: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("newsdl: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an environment failure, not the user's mistake
        if verbose:
            raise
        typer.echo(f"newsdl: failed: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", err=True)
        sys.exit(1)
