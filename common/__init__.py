"""Shared, torch-free core used by both the API (`service/`) and the GPU worker (`worker/`).

Settings, job records, blob storage, image validation and the Celery send side live here so that the two
processes agree on one contract (see docs/design.md) without the API ever importing the model stack.
"""
