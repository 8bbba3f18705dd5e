"""tlbench's Hydra sweeper, registered where Hydra looks for plugins (the `hydra_plugins` namespace)."""
