"""How streamrnn reaches a secured Kafka cluster and guards its own HTTP endpoint.

* :mod:`.options`: ``service.kafka`` to keyword arguments of kafka-python's consumer, producer
  and admin client (TLS context, SASL login, checked pass-through options).
* :mod:`.tls`: the client TLS context, built once from the CA, certificate, key and CRL files.
* :mod:`.tokens`: the OAUTHBEARER token provider that reads its file again when it changes.
* :mod:`.preflight`: one connection before the clients start, whose failures name the setting
  and the cause (wrong password, unknown CA, hostname mismatch, expired certificate, TLS to a
  plaintext port) instead of kafka-python's silent retries.
* :mod:`.redact`: log records never carry a secret's value.
* :mod:`.webconfig`: the Prometheus web-config file (TLS, basic auth with bcrypt hashes) of the
  metrics endpoint.

Secrets themselves are :class:`streamrnn.secret.Secret` values in the config.
"""
