"""Running the whole loop locally: Prometheus config, `make up` / `make down`, and `make demo`."""
