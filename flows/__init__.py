"""Prefect flows (full-pipeline, one flow per stage, nightly smoke) that chain `wrinklefree_core` stages.

The flows call the same stage entry points as the `wrinklefree` CLI; see docs/architecture.md.
"""
