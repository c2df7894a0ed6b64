"""Usage metering: one record per request, durable through a local write-ahead log, stored in batches."""
