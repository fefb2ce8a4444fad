//! The services user scripts reach through `ctx`: SQL, object storage, RAG,
//! the AI gateway and idempotency keys.
//!
//! Plain Rust with no V8 and no HTTP routing, so each service can be tested
//! and benchmarked on its own; `isolates` exposes them to scripts through thin
//! ops and `runtime` picks the backends.
//!
//! Nothing lives here yet: the first services arrive with their own issues.
