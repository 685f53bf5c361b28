"""CLI commands of the ops stage: `newsdl ops build`."""

from __future__ import annotations

from typing import Optional

import typer

from newsdl.errors import UserError


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    ops_app = typer.Typer(help="Custom TensorFlow ops (the great-circle distance).",
                          no_args_is_help=True)

    @ops_app.command("build")
    def build_cmd(
        cuda: Optional[bool] = typer.Option(
            None, "--cuda/--no-cuda",
            help="Compile the CUDA kernel too [default: when nvcc is found]"),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the cache has it."),
    ) -> None:
        """Compile the op library for this TensorFlow and CPU into the cache, and say where."""
        # TensorFlow is imported here, not at module level: `newsdl --help` stays fast.
        import logging

        from newsdl.ops import build as builder

        if not logging.getLogger().handlers:  # the main CLI may have set logging up already
            logging.basicConfig(format="%(message)s")
        logging.getLogger("newsdl.ops").setLevel(logging.INFO)
        try:
            built = builder.build(cuda=cuda, force=force)
        except builder.NoCompilerError as err:
            raise UserError(str(err)) from err
        except builder.BuildError as err:
            typer.echo(f"newsdl ops build: {err}", err=True)
            raise typer.Exit(1) from err
        typer.echo(f"library: {built.path}")
        typer.echo(f"cuda: {'compiled (sm_80, sm_90, compute_90 PTX)' if built.cuda else 'not compiled'}")
        typer.echo("cached: yes" if built.cached else f"built in {built.seconds:.0f} s")

    app.add_typer(ops_app, name="ops")
