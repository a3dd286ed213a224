"""Lensing Serve on Ray Serve: HTTP ingress, synthetic-map generator, PINN pool and job store (DESIGN.md 6-7).

`deployments.app:build_app` is the import path of the application; its arguments are `AppSettings`.
Depends on `lensing` (never the other way round).
"""
