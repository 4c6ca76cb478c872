"""Shared infrastructure every app may use and which uses no app: bulk writes, batch writers, errors, caches."""
