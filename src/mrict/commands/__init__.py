"""CLI command groups, one module per stage; each defines ``register(app)``."""
