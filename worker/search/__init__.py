"""Search: single and batch searches, the shard steps, the calibrated threshold, and each
worker's replicas (ANN index, snapshots, metadata columns)."""
