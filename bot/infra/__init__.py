"""Infrastructure the domain stands on: the store (one module per aggregate, Alembic migrations), the
Prometheus and MLflow model-registry clients, the scheduler, metrics, settings, redaction of secrets, the
actor name the bot acts under, and the typed plan values that cross layers (plans.py).
"""
