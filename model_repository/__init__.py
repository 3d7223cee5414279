"""The Triton model repository: Python-model sources (models/), the generator that writes a
repository for a profile and a target, and the embedded tritonserver (`python -m model_repository`)."""
