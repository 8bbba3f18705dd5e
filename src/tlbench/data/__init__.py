"""Data: where images come from (sources), reading them safely, splits and subsets, and the pipelines
that feed network-ready batches (streaming, in-memory, cached trunk features)."""
