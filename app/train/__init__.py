"""The training wing: one run, its phases and checkpoints, fold groups, the learner and its callbacks.

validate (a recipe down to its names and model) · plan (phases, dry runs) · learner (precisions, averaging) ·
phases · run (one run, top to bottom) · folds (groups, resume, parallel folds) · checkpoint + state + signals ·
callbacks/ by theme · optim · schedule · distributed · lr_find.
"""
