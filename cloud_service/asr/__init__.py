"""Full Whisper on PyTorch: checkpoint loading, batched decoding, wire-audio decoding."""
