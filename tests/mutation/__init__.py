"""Mutation testing (``make mutate``): never collected by ``make test``."""
