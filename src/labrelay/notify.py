"""Alert sinks: where ``labrelay.relay.alerts.AlertDispatcher`` delivers alerts. Adapters; wired by the runtime.

- webhook: a JSON POST of the alert document (``labrelay serve --alert-webhook URL``, or ``alert_webhook``);
- e-mail: one message per alert through an SMTP relay (``alert_smtp``, ``alert_email_from``, ``alert_email_to``),
  with STARTTLS (required unless the SMTP relay is on this host);
- syslog: one RFC 3164 line per alert, to ``udp://host:port`` or a local socket such as ``/dev/log``.

An alert carries rule names, party names, counts and audit sequence numbers: no payload data, no identifier of a
person. A webhook URL is https, or http to a loopback address, like every other URL labrelay calls.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import smtplib
import socket
import ssl
from email.message import EmailMessage
from urllib.parse import urlsplit

import httpx

from labrelay.domain.names import is_loopback_host
from labrelay.errors import InsecureTransport, UsageError
from labrelay.relay.alerts import Alert, AlertSink


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0, attempts: int = 3) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"invalid alert webhook URL {url!r}")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise InsecureTransport("an alert webhook off loopback must be https://")
        self.url = url
        self._timeout = timeout
        self._attempts = attempts

    def send(self, alert: Alert) -> None:
        last: Exception | None = None
        for _ in range(self._attempts):
            try:
                with httpx.Client(timeout=self._timeout, trust_env=False, follow_redirects=False) as client:
                    response = client.post(self.url, json=alert.as_doc())
                if response.status_code < 300:
                    return
                last = RuntimeError(f"webhook answered {response.status_code}")
            except httpx.HTTPError as exc:
                last = exc
        raise last or RuntimeError("webhook failed")


class SmtpSink:
    name = "smtp"

    def __init__(self, server: str, sender: str, recipients: list[str], timeout: float = 10.0) -> None:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"alert_smtp must be HOST:PORT, got {server!r}")
        if not sender or not recipients:
            raise UsageError("alert e-mail needs alert_email_from and alert_email_to")
        self.host, self.port = host, int(port)
        self.sender, self.recipients = sender, recipients
        self._timeout = timeout

    def send(self, alert: Alert) -> None:
        msg = EmailMessage()
        msg["Subject"] = f"[labrelay] {alert.rule}: {alert.subject}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(alert.summary + "\n\n" + json.dumps(alert.as_doc(), indent=2) + "\n")
        with smtplib.SMTP(self.host, self.port, timeout=self._timeout) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            elif not is_loopback_host(self.host):  # no silent downgrade to plain text off this host
                raise InsecureTransport(f"SMTP server {self.host} does not offer STARTTLS")
            smtp.send_message(msg)


class SyslogSink:
    name = "syslog"

    def __init__(self, target: str) -> None:
        address: str | tuple[str, int]
        if target.startswith("udp://"):
            parts = urlsplit(target)
            if not parts.hostname or not parts.port:
                raise UsageError(f"alert_syslog must be udp://HOST:PORT or a socket path, got {target!r}")
            address = (parts.hostname, parts.port)
        elif target.startswith("/"):
            address = target
        else:
            raise UsageError(f"alert_syslog must be udp://HOST:PORT or a socket path, got {target!r}")
        self._handler = logging.handlers.SysLogHandler(
            address=address,
            facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
            socktype=socket.SOCK_DGRAM,
        )
        self._handler.ident = "labrelay: "

    def send(self, alert: Alert) -> None:
        record = logging.LogRecord(
            "labrelay.alerts", logging.WARNING, __file__, 0, json.dumps(alert.as_doc(), sort_keys=True), None, None
        )
        self._handler.emit(record)


def sinks_from(webhook: str, smtp: str, email_from: str, email_to: str, syslog: str) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    if webhook:
        sinks.append(WebhookSink(webhook))
    if smtp:
        sinks.append(SmtpSink(smtp, email_from, [a.strip() for a in email_to.split(",") if a.strip()]))
    if syslog:
        sinks.append(SyslogSink(syslog))
    return sinks
