"""Whole-collection analyses: clustering and near-duplicate groups, and their jobs."""
