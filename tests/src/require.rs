//! Requirements of the end-to-end tests. A missing one FAILS the test with a message
//! naming it (tests never skip silently).
use std::path::Path;

pub fn root_and_bpf() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF programs; run `cargo xtask test` as root"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the kernel exposes no BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): the agent needs it"
    );
    assert!(
        Path::new("/sys/kernel/tracing/events/syscalls").exists(),
        "tracefs with syscall tracepoints is not mounted at /sys/kernel/tracing: run `cargo xtask setup`"
    );
}

pub fn demo_built() {
    let root = crate::workspace_root();
    for (path, what) in [
        (
            "demo/_build/ebin/demo_app.beam",
            "the demo BEAM is not compiled",
        ),
        (".venv/bin/python", "the project venv is missing"),
    ] {
        assert!(
            root.join(path).exists(),
            "{what} ({path}): run `cargo xtask setup`"
        );
    }
}
