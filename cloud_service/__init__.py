"""The cloud service: full Whisper over gRPC, batching, Redis state, the fleet controller and model builds."""
