//! Throwaway PostgreSQL clusters for tests and the demo.
