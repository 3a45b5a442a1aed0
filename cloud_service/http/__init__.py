"""The OpenAI-compatible REST API (FastAPI on uvicorn), served beside gRPC on the same event loop."""
