//! End-to-end tests live in this package's test targets; see `tests/it/` (one binary, a module per service).
