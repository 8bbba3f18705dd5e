"""The run's settings: what each config key may hold, checked once before anything runs."""
