"""`agentctl loadtest` beyond its command: the runner (Locust in subprocesses, a simulated deployment), the
report."""
