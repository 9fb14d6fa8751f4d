"""``labrelay agent``: one long-running process for one or several parties of one organisation (docs/agent.md).

Above the client layer: it drives the client's use cases (the idempotent routed send, fetch, retirement of old
identities) the way the CLI's commands do, but unattended: a lab's outbox watched and sorted into ``sent/`` and
``failed/``, a recipient's inbox filled continuously with an optional hook per file, JSON events on stdout, health
and Prometheus metrics on loopback. It never imports the relay's side, the HTTP layer or the CLI.

    settings.py   the [agent] table of labrelay.toml, checked
    policy.py     what an error means for a unit (retry, give up, refuse) and the back-off between attempts
    events.py     the JSON log: one object a line, no record contents
    health.py     the metrics registry and the loopback health/metrics listener
    outbox.py     when a file in the outbox is complete; moving it to sent/ or failed/ with its report
    lab.py        the lab side: watch, send once, sort
    recipient.py  the recipient side: poll, fetch, hook
    runner.py     the threads, the signals, ``--once``
"""
