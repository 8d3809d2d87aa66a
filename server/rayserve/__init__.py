"""Serving on Ray Serve: engine replicas (replica.py) behind our FastAPI app as the ingress (app.py), a
prefix-aware request router (router.py), and the command that starts or joins a cluster (launch.py)."""
