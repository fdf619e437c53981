//! Call reconstruction: requests matched to responses per connection and stream, the
//! four kernel-visible moments of each call, pool occupancy, worker crashes.
//!
//! Feed a [`CallTracker`] with [`input::Observation`]s and [`input::Lifecycle`] facts
//! in kernel order, call [`CallTracker::tick`] now and then; it publishes the
//! design's events on the bus.
mod config;
pub mod input;
pub mod ml;
mod pools;
mod tracker;

pub use config::{mono_now_ns, MonoClock, TrackerConfig};
pub use tracker::{
    grpc_status_name, is_user_operation, CallTracker, TrackerStats, ERROR_EXIT, ERROR_RESET,
    PIPE_OPERATION, PYTHON_PREFIX, UNKNOWN_OPERATION,
};

#[cfg(test)]
mod tests;
