"""Alert sinks: where alert events go once the detector has emitted them.

:mod:`monitor.sinks.webhook` is the HTTP side of delivery (payloads for generic JSON receivers
and Alertmanager, HMAC signatures, retries); the consumer that feeds it from the alerts topic
is :mod:`monitor.notify`.
"""
