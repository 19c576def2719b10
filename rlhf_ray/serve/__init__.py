"""Ray Serve ranker: ``ranker`` (pure torch pages), ``schemas`` (HTTP bodies), ``api``
(FastAPI routes), ``app`` (the Serve deployment; import path
``rlhf_ray.serve.app:build_app``), ``cli`` (``rlhf-ray serve``).

Importing this package imports nothing heavy; import the submodule you need.
"""
