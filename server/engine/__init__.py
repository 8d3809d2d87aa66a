"""Turns token ids into token ids. Knows no HTTP and no Triton: the same engine runs in process and
inside Triton's python backend."""
