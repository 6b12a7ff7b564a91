"""The Typer app every command module adds its commands to, and what turns a TrashError into `error:` lines."""

import functools

import typer

from app.errors import TrashError

EXAMPLES = """[bold]Examples[/bold] (first: make demo, or trash demo-data data/demo)

  trash fit recipes/demo.py --set train.epochs=3

  trash lr-find recipes/demo.py

  trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds

  trash evaluate runs/demo/latest --data data/demo/val.json --images data/demo
"""

app = typer.Typer(
    help="Train, export and run semantic-segmentation models for recycling-trash photos (fastai + timm).",
    epilog=EXAMPLES,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def friendly(fn):
    """Turns TrashError into `error: ...` lines on stderr and its exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrashError as e:
            for line in str(e).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C outside training (which stops cleanly itself, see app/train/signals.py)
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def progress():
    """The progress bar library loops take (app/progress.py): drawn in a terminal, none in a log or a pipe."""
    from app.progress import bar, quiet_outside_terminal

    quiet_outside_terminal()
    return bar
