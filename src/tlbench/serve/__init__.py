"""Using a trained checkpoint: predict, export (ONNX / TorchScript) and Grad-CAM."""
