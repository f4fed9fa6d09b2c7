"""The GPU worker: a Celery consumer of queue ``gpu`` that owns one DiffBIR pipeline per process.

Importing this package (or ``worker.celery_app``) is cheap: torch and the model are imported lazily by
``worker.loading`` when the worker process starts, never at import time.
"""
