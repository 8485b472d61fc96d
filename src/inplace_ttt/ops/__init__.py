"""The math of In-Place TTT. Depends on torch only.

- `common`: validation, the fast-weight sum's dtype, a chunk's update and its clipping;
- `chunk`: the chunk scan on one process (forward and backward functions, a thin autograd Function);
- `distributed`: context parallelism, sequences split along time across a process group;
- `dispatch`: `inplace_ttt`, the one public entry (one process, or a group);
- `recurrent`, `state`: streaming (a prefill, one token per row, the CUDA-graph-safe fixed step) and the states they carry;
- `reference`: the plain token loop the fast op is held to (shares only `common`'s contract checks);
- `segments`, `layout`, `conv`: documents and chunks from positions, the slot schedule, the chunk-local convolution.
"""

from .common import chunk_update, clip_factor, state_dtype
from .conv import chunk_conv
from .dispatch import inplace_ttt
from .distributed import SequenceShard, context_parallel_ttt, sequence_shard
from .recurrent import fixed_step, prefill, token_step
from .reference import inplace_ttt_reference
from .segments import Segments, find_segments
from .state import FastWeightState, FixedStepState

__all__ = [
    "chunk_update",
    "clip_factor",
    "inplace_ttt",
    "inplace_ttt_reference",
    "chunk_conv",
    "find_segments",
    "Segments",
    "state_dtype",
    "SequenceShard",
    "context_parallel_ttt",
    "sequence_shard",
    "prefill",
    "token_step",
    "fixed_step",
    "FastWeightState",
    "FixedStepState",
]
