"""The edge node: int8 ONNX Whisper tiny.en on onnxruntime, confidence scoring, escalation. Never imports torch."""
