"""What a run leaves on disk for others to read: results.json and predictions.csv."""
