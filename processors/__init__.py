"""Pure planning cores (decode, pseudonymize, vehicle state, trips, archive, dead letters)
and their thin I/O edges."""
