"""Ray job entrypoints for Lensing Serve: parameter sweeps of the PINN over the host-halo box.

`python -m cluster.sweep CONFIG --output DIR_OR_URI` runs one sweep (docs/design.md section 8). This
package imports `lensing`; `lensing` never imports it.
"""
