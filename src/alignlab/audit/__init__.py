"""Audit instruments: sparse autoencoders, feature search, steering, data attribution and the blind auditing game."""

# the library-backed attribution method registers itself (kronfluence is imported only when it runs)
from alignlab.audit import influence  # noqa: F401
