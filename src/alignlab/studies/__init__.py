"""One module per study: runs the arms × seeds, writes results.json, metrics.jsonl, plots and report.md."""
