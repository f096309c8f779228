"""The boto3 adapters of ``processors.ports``: one module per store, each translating AWS outcomes into
the domain errors of ``processors.errors``. Built in one place: ``worker.wiring``."""
