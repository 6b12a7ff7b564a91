"""recipes/trashcan.py with the encoder trained from scratch: what any encoder without local weights gets."""

base = "trashcan.py"
model = dict(pretrained=False)
