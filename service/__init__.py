"""The HTTP API: accepts uploads, records jobs, enqueues them, reports status and results. No torch here."""
