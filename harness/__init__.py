"""The app on a private local Ray cluster, for the tests and the benchmarks (docs/design.md section 12).

`ray_head`: a Ray head on free ports in its own temp dir, started from this venv, always stopped by its
process id. `serve`: configs derived from serve_config.yaml, `serve deploy` onto such a head, waiting.
"""
