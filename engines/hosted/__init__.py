"""Hosted talking-head services behind a small HTTP client each (no buckets here: the handlers stage the inputs).

``did``: D-ID's talks API (``POST /talks``, ``GET /talks/{id}``).
"""
