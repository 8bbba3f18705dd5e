"""tlbench: transfer learning for image classification — pretrained backbones, named strategies, sweeps."""

__version__ = "0.1.0"
