//! Off-CPU samples: why a thread left the CPU, as the leaf pseudo-frame of its stack
//! (`[off-cpu: read]`), and which profile a sample belongs to.
use super::stacks::Frame;

/// Which of a worker's profiles: where its threads burn CPU (CPU-clock samples) or
/// where they wait (stacks taken when they block, weighted by the time until they run
/// again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ProfileMode {
    #[default]
    Cpu,
    OffCpu,
}

impl ProfileMode {
    /// `cpu` / `off-cpu` (CLI values, the HTTP `mode` parameter).
    pub fn parse(s: &str) -> Option<ProfileMode> {
        match s {
            "cpu" | "" => Some(ProfileMode::Cpu),
            "off-cpu" | "offcpu" | "off_cpu" => Some(ProfileMode::OffCpu),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProfileMode::Cpu => "cpu",
            ProfileMode::OffCpu => "off-cpu",
        }
    }
}

/// The library name of the pseudo-frame.
pub const REASON_LIBRARY: &str = "kernel";
/// Prefix of the pseudo-frame's name.
pub const REASON_PREFIX: &str = "[off-cpu: ";

/// The leaf pseudo-frame of an off-CPU sample: the syscall the thread blocked in, or
/// its task state when it blocked outside one (a page fault: `D`).
pub fn reason_frame(syscall: i32, state: u32) -> Frame {
    let why = match syscall_name(syscall) {
        Some(n) => n.to_string(),
        None if syscall >= 0 => format!("syscall {syscall}"),
        None => format!("state {}", state_letter(state)),
    };
    Frame::Native {
        name: format!("{REASON_PREFIX}{why}]"),
        library: REASON_LIBRARY.into(),
    }
}

/// `ps`'s letter for a task state (TASK_* bits of `prev_state`).
fn state_letter(state: u32) -> char {
    match state {
        0 => 'R',
        s if s & 0x2 != 0 => 'D',
        s if s & 0x1 != 0 => 'S',
        s if s & 0x4 != 0 => 'T',
        s if s & 0x8 != 0 => 't',
        _ => '?',
    }
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls a
/// worker thread blocks in, and a few common others.
const SYSCALLS: &[(i32, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (7, "poll"),
    (9, "mmap"),
    (10, "mprotect"),
    (11, "munmap"),
    (12, "brk"),
    (16, "ioctl"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (23, "select"),
    (24, "sched_yield"),
    (34, "pause"),
    (35, "nanosleep"),
    (40, "sendfile"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (56, "clone"),
    (57, "fork"),
    (59, "execve"),
    (61, "wait4"),
    (72, "fcntl"),
    (73, "flock"),
    (74, "fsync"),
    (75, "fdatasync"),
    (128, "rt_sigtimedwait"),
    (130, "rt_sigsuspend"),
    (202, "futex"),
    (230, "clock_nanosleep"),
    (232, "epoll_wait"),
    (247, "waitid"),
    (257, "openat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (281, "epoll_pwait"),
    (288, "accept4"),
    (295, "preadv"),
    (296, "pwritev"),
    (299, "recvmmsg"),
    (307, "sendmmsg"),
    (318, "getrandom"),
    (426, "io_uring_enter"),
    (435, "clone3"),
    (441, "epoll_pwait2"),
    (449, "futex_wait"),
];

pub fn syscall_name(nr: i32) -> Option<&'static str> {
    SYSCALLS
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .map(|i| SYSCALLS[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_syscall_or_the_state() {
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert_eq!(reason_frame(0, 1).name(), "[off-cpu: read]");
        assert_eq!(reason_frame(202, 1).name(), "[off-cpu: futex]");
        assert_eq!(reason_frame(232, 1).name(), "[off-cpu: epoll_wait]");
        assert_eq!(reason_frame(333, 1).name(), "[off-cpu: syscall 333]");
        assert_eq!(reason_frame(-1, 2).name(), "[off-cpu: state D]");
        assert_eq!(reason_frame(-1, 1).library(), REASON_LIBRARY);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(ProfileMode::parse("off-cpu"), Some(ProfileMode::OffCpu));
        assert_eq!(ProfileMode::parse(""), Some(ProfileMode::Cpu));
        assert_eq!(ProfileMode::parse("wall"), None);
        assert_eq!(ProfileMode::OffCpu.as_str(), "off-cpu");
    }
}
