"""Stand-ins used by the tests and tools to run backends without their hardware (never imported by production code)."""
