"""A small shop whose orders are whizorch sagas (see sagas.py)."""
