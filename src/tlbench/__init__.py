"""tlbench: transfer learning for image classification — pretrained backbones, named strategies, honest sweeps."""

__version__ = "0.1.0"
