"""The physics-informed neural network: encoding, model, training, calibration, refinement."""
