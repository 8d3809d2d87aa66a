"""The umbrella `slipstream` command: above server, client and eval, which know nothing of each other's
commands (server imports neither client nor eval)."""
