//! Placeholder; the backend lands in its own change.
