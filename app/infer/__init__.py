"""The inference wing: exported models (and ensembles of them) → probabilities → masks, scores, submissions.

options (InferenceOptions) · members · stream · tta (view-set registry) · tiles · postprocess · predict ·
submission · evaluate · ensemble (out-of-fold selection) · pseudo. Never imports app.train.
"""
