"""The math of In-Place TTT. Depends on torch only."""

from .chunked import chunk_update, clip_factor, inplace_ttt, state_dtype
from .conv import chunk_conv
from .distributed import SequenceShard, context_parallel_ttt, sequence_shard
from .reference import inplace_ttt_reference
from .segments import Segments, find_segments

__all__ = ["chunk_update", "clip_factor", "inplace_ttt", "inplace_ttt_reference", "chunk_conv", "find_segments", "Segments", "state_dtype",
           "SequenceShard", "context_parallel_ttt", "sequence_shard"]
