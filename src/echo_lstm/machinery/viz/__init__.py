"""Pictures of runs and sweeps: the tutorial's echo figure and the sweep summary plot."""
