"""Models: pretrained backbones adapted to the task, the fine-tuning strategy, and the LightningModule."""
