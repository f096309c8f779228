"""``make bench``: fleet-ingest against the naive peer a team would otherwise write (see ``__main__``)."""
