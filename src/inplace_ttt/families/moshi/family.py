"""The Moshi family, as the generic code calls it (`families.protocol.Family`)."""

from ..protocol import Family
from .convert import convert, set_context_parallel, settings, ttt_layers
from .probe import PROBE
from .saved import read_saved

FAMILY = Family(
    name="moshi", convert=convert, ttt_layers=ttt_layers, settings=settings, set_context_parallel=set_context_parallel, probe=PROBE, read_saved=read_saved
)
