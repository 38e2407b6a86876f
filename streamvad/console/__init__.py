"""The operator's side: the HTTP app serve hosts (API, console pages, /healthz, /metrics), its auth, and the
nearest-normal-exemplar lookup the event page shows."""
