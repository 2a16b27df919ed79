"""Market data routes: latest quotes and historical bars, cached (contract §4, Market data)."""
