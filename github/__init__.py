"""GitHub: webhooks that start runs, the check runs and reviews reported back, and the App's client."""
