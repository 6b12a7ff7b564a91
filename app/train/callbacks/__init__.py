"""fastai callbacks that change trash's training loop, one module per theme (module level: they are pickled
into exports).

- base: what they share (complete epochs, the confusion-matrix metric, class names);
- precision: `CPUMixedPrecision`, bf16 autocast on CPU;
- history: `HistoryCSV`, one row per epoch across stages, with `iou_<class>` columns;
- tracking: `StopOnNonFinite` (NaN/inf loss: exit 3), `BestModel` (resume-safe SaveModelCallback),
  `TopKCheckpoints` (the k best epochs);
- averaging: `ModelEMA` (timm), `SWA` (torch), `average_checkpoints`;
- levers: `SegCutMix`, `AdaptiveClassWeights`.

Checkpoints and signals (`Checkpoint`, `StopOnSignal`) live with the checkpoint files in app/train/checkpoint.py
and app/train/signals.py.
"""
