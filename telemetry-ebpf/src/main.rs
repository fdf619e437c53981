//! snakepit-probes: the kernel half of snakepit-agent.
//!
//! Hooks are grouped by file: `io` (read/write family payload capture), `sockets`
//! (accept/connect/close bookkeeping), `lifecycle` (fork/exec/exit), `oom` (OOM kills), `sched` (context switches and wakeups
//! of the workers' threads), `serialize` ((de)serialization uprobes in the workers). All maps and
//! loader-set globals live in `maps`. Record layouts come from telemetry-common.
#![no_std]
#![no_main]
// atomic_xadd: the bpf target's AtomicU64 has no fetch_add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod io;
mod io_chunks;
mod lifecycle;
mod maps;
mod oom;
mod profile;
mod pystack;
mod sched;
mod serialize;
mod sockets;

/// The kernel only lets GPL-compatible programs call GPL-only helpers such as
/// bpf_probe_read_user, so the probe object declares a GPL-compatible license.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this only satisfies no_std.
    loop {}
}
