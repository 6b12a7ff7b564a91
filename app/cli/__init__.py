"""The `trash` command line: a thin Typer shell, one module per command group, every body one library call.

- base: the Typer app, `friendly` (TrashError -> `error:` lines and its exit code);
- options: the options several commands share, declared once (the inference options become InferenceOptions);
- data: demo-data, data check / masks / stats / split / show;
- train: fit, lr-find, recipes, runs, models;
- infer: predict, evaluate, ensemble, pseudo, export (ONNX);
- report: report (HTML pages of runs, groups, comparisons).

Importing this package imports no torch or fastai: `trash --help` stays instant; command bodies import the
library they call.
"""

from app.cli import data, train, infer, report  # noqa: F401, I001  (each adds its commands to `app`)
from app.cli.base import app


def main() -> None:
    import warnings

    # Emitted at import by a dependency on every command; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
    app()
