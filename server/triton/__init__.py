"""Triton Inference Server: the python-backend model that runs the engine inside Triton (model.py), the
JSON both sides exchange (wire.py), and a local tritonserver from the nvidia-pytriton wheel (launch.py)."""
