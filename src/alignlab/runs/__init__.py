"""Reusable runs, the layer between the instruments and the studies: the RL-arm runner and its measurements
(`rl.py`), the frontier measurer (`frontier.py`), the pretraining runner (`pretraining.py`) and its worlds
(`worlds.py`), the poisoning grid (`poison.py`). Every knob of a run is declared here once; nothing here imports
`studies/`."""
