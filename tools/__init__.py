"""Helpers for particular machines, outside the product (see tools/README.md)."""
