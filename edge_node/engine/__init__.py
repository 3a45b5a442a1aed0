"""The edge engine: onnxruntime sessions over the artifact's files, VAD and the transcriber."""
