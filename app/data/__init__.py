"""The data wing: COCO json → checked items, cached masks, fastai loaders, splits, statistics, demo data.

coco (parse) · masks (rasterize + cache, overlap rules) · check + shapes (validation) · images (the one
decoder) · items (a recipe's data) · augment (presets) · rare (copy-paste, mosaic, balanced sampling) ·
loaders (fastai DataLoaders) · split · stats · show · synthetic + drawings (the demo dataset).
Never imports app.model (and is imported by it never).
"""
