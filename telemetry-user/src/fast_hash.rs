//! Hash maps of the per-record path (streams, calls, threads, fds, interned stacks).
//!
//! std's SipHash guards a map against keys chosen to collide; it was about 6 % of the
//! agent's CPU at saturation (perf, 2026-11-30). These maps are keyed by pids, fds,
//! stream and call ids; a peer chooses at most an HTTP/2 stream id or a pipe request
//! id, and every map here is seeded afresh (foldhash's `RandomState`), so colliding
//! keys cannot be prepared in advance.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
