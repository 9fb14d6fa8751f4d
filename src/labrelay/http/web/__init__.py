"""The web console and the browser pages, served by the relay (templates, bundled scripts, the console's JSON).

Built from ``web/`` (JavaScript sources, npm lock file) into ``static/`` by ``./dev web``; the bundle is committed,
so the relay serves it with nothing but Python installed. Nothing here ever receives plaintext: the pages encrypt
and decrypt in the browser and talk to the same signed /v1 API as the CLI.
"""
