"""How the API reaches an engine: in process (embedded.py) or over Triton's gRPC (triton.py). Both
answer to the Backend protocol (base.py) that serving.py, routes.py and metrics.py use."""
