"""Wire formats, table items and table definitions: the single source of truth."""
