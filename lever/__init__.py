"""lever: declarative plans for training and evaluating in-context demonstration selectors."""

__version__ = "0.1.0"
