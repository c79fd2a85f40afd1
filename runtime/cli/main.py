"""The `g4rt` command line: the group and its commands (one module per kind of command), and
`run`, which turns errors into one clear line and a non-zero exit (--debug shows tracebacks)."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import G4rtError
from . import bench, checks, generate, inspect, serve, synth


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="g4rt")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx, debug):
    """g4rt: run Gemma 4 GGUF models on Vulkan, CUDA or the CPU."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def run(argv=None) -> int:
    """Entry point that turns G4rtError into one line on stderr and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        main.main(args=argv, prog_name="g4rt", standalone_mode=False)
    except G4rtError as e:
        if debug:
            raise
        click.echo(f"g4rt: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("g4rt: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("\ng4rt: interrupted", err=True)
        return 130
    except OSError as e:
        if debug:
            raise
        click.echo(f"g4rt: error: {e}", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(run())


for command in (generate.run, generate.chat, inspect.tokenize, serve.serve, inspect.info, checks.parity,
                bench.bench, synth.synth, checks.conformance, checks.perplexity):
    main.add_command(command)
