"""What a run writes: atomic files, logs, results tables and pictures."""
