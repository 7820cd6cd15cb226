"""`kvrouter serve --processes N`: N router processes accept on one port.

One parent (`supervisor`) starts N children, each a whole router serving the same port
(`SO_REUSEPORT`: the kernel spreads new connections over them). The parent routes nothing: it
forwards signals (SIGHUP reloads every child, SIGTERM drains every child), restarts a child that
dies, and relays what child 0, the *leader*, observes to the others (`channel`).

What is shared and how:

- Sessions (pins, served records, history) live in the shared store, which `--processes > 1`
  requires (`router.config.per_process_state` says what would otherwise be per process).
- Only the leader probes workers' health and scrapes their load; the others apply the same
  results (`follow`), so probes and scrapes are not multiplied by N.
- The operator API listens in the leader only; a change made there (drain, undrain, weight) is
  relayed to every other child. SIGHUP reaches every child.
- `/metrics`, answered by whichever child takes the scrape, shows the whole router:
  prometheus-client's multiprocess mode, one directory of value files per supervisor.
"""
