"""The study kit: resumable records, report helpers (tables, CIs, plots), report.html, shared evidence pieces."""
