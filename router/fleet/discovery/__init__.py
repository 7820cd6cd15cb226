"""Where the worker list comes from: static settings, DNS, or Kubernetes EndpointSlices."""
