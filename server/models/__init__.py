"""The model store: known models, export to fused ONNX, the model_repository layout."""
