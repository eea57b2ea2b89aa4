"""Files the core writes and reads back: atomic writes, checksummed checkpoints, tensor files."""
