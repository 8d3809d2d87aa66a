"""How the API reaches an engine: in process (embedded) now, over Triton later."""
