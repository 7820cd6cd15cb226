"""kvrouter: a session-affinity router and load balancer for LLM inference."""

__version__ = "0.1.0"
