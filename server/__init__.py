"""slipstream's completion service: an HTTP API in front of an ONNX Runtime engine."""
