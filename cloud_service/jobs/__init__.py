"""Redis state and the stream worker: results, the device registry, queued jobs."""
