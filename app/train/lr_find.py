"""`trash lr-find`: fastai's learning-rate finder on a recipe's data and model, plotted in its own run folder.

The folder is `<out>/<recipe>/<time>-lr_find/`; it never becomes the recipe's `latest` (that is the last
finished training run).
"""

from pathlib import Path

from app.atomic import savefig, write_json
from app.train.learner import strip_training_callbacks
from app.train.run import prepare


def lr_find(recipe_file: str | Path, overrides=(), out: str | Path = "runs", iters: int = 100) -> tuple[Path, dict]:
    """Runs fastai's lr_find at the first stage's size; saves lr_find.png and lr_find.json in a run directory.

    fastai's `slide` suggestion is left out: it indexes 16 points back and fails when lr_find stops early.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fastai.callback.schedule import minimum, steep, valley

    recipe, _, learn = prepare(recipe_file, overrides, out, suffix="-lr_find")
    run = learn.path
    strip_training_callbacks(learn)
    found = learn.lr_find(num_it=iters, suggest_funcs=(minimum, steep, valley), show_plot=True)
    savefig(plt.gcf(), run / "lr_find.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    suggestions = {name: float(value) for name, value in found._asdict().items()}
    write_json(run / "lr_find.json", {"suggestions": suggestions, "recipe_lr": recipe.train.lr})
    return run, suggestions
