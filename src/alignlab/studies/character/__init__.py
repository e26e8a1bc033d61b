"""The character study: `study.py` runs it (config, presets, run_study), `report.py` writes its report."""
