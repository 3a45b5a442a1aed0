"""The edge node: int8 ONNX Whisper tiny.en on onnxruntime, confidence, escalation. Never imports torch."""
