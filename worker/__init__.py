"""fleet-ingest worker: KCL record processor, launcher, local AWS and operator CLI."""
