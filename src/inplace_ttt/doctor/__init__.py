"""`doctor`: the invariants of In-Place TTT, checked on a user's own model and data (`checks`),
and on a saved model read from its files (`inputs`: what `ittt doctor` runs)."""

from .checks import Check, Report, doctor
from .inputs import DoctorInputs, check_saved, load_inputs

__all__ = ["doctor", "Report", "Check", "check_saved", "load_inputs", "DoctorInputs"]
