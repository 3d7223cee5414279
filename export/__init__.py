"""PyTorch -> ONNX export of the engine's models: `python -m export --profile tiny`."""
