"""The relay's HTTP edge: FastAPI routes that authenticate, call ``labrelay.relay`` services, and map errors.

Routes hold no logic beyond parsing and streaming. Error classes become HTTP statuses here and nowhere else
(``problems``). The OpenAPI document is served at /openapi.json.
"""
