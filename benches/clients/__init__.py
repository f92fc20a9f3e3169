"""Registry adapters with one interface, one per client under comparison."""
