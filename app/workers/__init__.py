"""Background loops the lifespan starts and stops (``app/main.py``): cleanup, later the reconciler."""
