"""The relay's HTTP edge: FastAPI routes that authenticate, call ``labrelay.relay`` services, and map errors.

``app.create_app`` builds the application from ``services.RelayServices``: one router per area in ``routes/`` (and
the console's pages in ``web/``), their request plumbing as dependencies in ``deps``, the answers to errors in
``errors`` (statuses from ``problems``, here and nowhere else), the response headers, metrics and log in
``middleware``, the background loops in ``lifespan``, the limits against exhaustion in ``edge``. Routes hold no
logic beyond parsing and streaming. The wire's names (tus, content types, headers) are ``labrelay.wire``, shared
with the client. The OpenAPI document is served at /openapi.json.
"""
