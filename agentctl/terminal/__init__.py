"""`agentctl chat` beyond its command: the HTTP client of the API, and the terminal it talks in."""
