"""trash: train, export and run semantic-segmentation models for recycling-trash photos."""

__version__ = "0.1.0"
