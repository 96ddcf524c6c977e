"""trial watcher: watch ClinicalTrials.gov studies and tell people what changed."""

__version__ = "0.1.0"
