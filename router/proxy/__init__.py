"""The data path: forward one request to a worker (placement per attempt, retries before
anything reached the client, one place that classifies failures) and relay its answer."""
