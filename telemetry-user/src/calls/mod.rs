//! Call reconstruction: requests matched to responses per connection and stream, the
//! four kernel-visible moments of each call, pool occupancy, worker crashes.
pub mod input;
