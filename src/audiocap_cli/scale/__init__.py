"""Beyond one process: shards, torchrun data parallelism, Ray Data."""
