"""Lensing Serve on Ray Serve: HTTP ingress, synthetic-map generator, PINN pool and job store.

The API is docs/design.md section 6, the topology section 7.

`deployments.app:build_app` is the import path of the application; its arguments are `AppSettings`.
Depends on `lensing` (never the other way round).
"""
