"""Versioned model store: immutable versions, atomic activation, lineage and importance history."""
