"""The fleet: workers and their state (one writer, the pool), in-flight leases, active health
probes and passive outlier ejection."""
