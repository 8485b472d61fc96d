"""Model families: where TTT layers go in a model and how they get positions and state."""

from .hf import clip_tau, convert, decoder_layers, from_pretrained, is_converted, set_clip_tau, ttt_layers, ttt_positions

__all__ = ["convert", "from_pretrained", "set_clip_tau", "clip_tau", "ttt_layers", "decoder_layers", "is_converted", "ttt_positions"]
