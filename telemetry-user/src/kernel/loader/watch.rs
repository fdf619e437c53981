//! What the probes watch: the pid and fd maps, their bitmaps, cursor hints and
//! whole-capture marks, driven by discovery as processes and connections come and go.

use super::*;

impl Probes {
    /// Sets the WATCHED_PIDS flags (PID_*) of `tgid`, replacing earlier ones.
    pub fn watch_pid(&mut self, tgid: u32, flags: u32) -> Result<(), KernelError> {
        // Before the entry: with PID_WATCH_NEW_SOCKETS the kernel may watch its next
        // socket at once, and the read/write exits look at IO_PIDS first.
        set_pid_bit(&mut self.io_pids, tgid, true).map_err(map_err(MAP_IO_PIDS))?;
        self.watched_pids
            .insert(tgid, flags, 0)
            .map_err(map_err(MAP_WATCHED_PIDS))
    }

    /// Current flags of `tgid`, if watched.
    pub fn pid_flags(&self, tgid: u32) -> Option<u32> {
        self.watched_pids.get(&tgid, 0).ok()
    }

    /// Stops watching `tgid` (no error if it was not watched).
    pub fn unwatch_pid(&mut self, tgid: u32) -> Result<(), KernelError> {
        ignore_missing(self.watched_pids.remove(&tgid)).map_err(map_err(MAP_WATCHED_PIDS))
    }

    /// Starts capturing (tgid, fd). An entry the kernel already made (accept/connect)
    /// is kept, with its sequence numbers, totals and frame cursors.
    ///
    /// `cursors` (index `Direction::index`): bytes until the next frame header
    /// in each direction, when known (e.g. `Some([0, 0])` for a pipe that has carried
    /// nothing yet); `None` leaves the kernel frame cursor off for this fd.
    pub fn watch_fd(
        &mut self,
        tgid: u32,
        fd: u32,
        fd_kind: u32,
        cursors: Option<[u32; 2]>,
    ) -> Result<(), KernelError> {
        let state = FdState::new(fd_kind, cursors.unwrap_or([CURSOR_UNKNOWN; 2]));
        set_pid_bit(&mut self.io_pids, tgid, true).map_err(map_err(MAP_IO_PIDS))?;
        const BPF_NOEXIST: u64 = 1;
        match self
            .watched_fds
            .insert(FdKey { tgid, fd }, state, BPF_NOEXIST)
        {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Ok(()) => self.raise_watch_generation(),
            Err(e) => Err(map_err(MAP_WATCHED_FDS)(e)),
        }
    }

    /// After an insert into WATCHED_FDS: the exits' cached misses are stale. Not
    /// atomic against the kernel's own raises (by 1), hence the larger step: the value
    /// written is larger than any the kernel could have written meanwhile.
    fn raise_watch_generation(&mut self) -> Result<(), KernelError> {
        let gen = self.watch_gen.get(&0, 0).map_err(map_err(MAP_WATCH_GEN))?;
        self.watch_gen
            .set(0, gen.wrapping_add(WATCH_GEN_USER_STEP), 0)
            .map_err(map_err(MAP_WATCH_GEN))
    }

    /// Tells the kernel where the next frame header of a stream lies, learnt by a
    /// decoder in user space: `cursor` bytes after the end of the syscall numbered
    /// `after_seq` in `direction`. Taken only if the
    /// kernel's own cursor is unknown and that syscall is still the latest one.
    pub fn set_cursor_hint(
        &mut self,
        tgid: u32,
        fd: u32,
        direction: Direction,
        after_seq: u64,
        cursor: u32,
    ) -> Result<(), KernelError> {
        let key = FdKey { tgid, fd };
        let mut hint = self.cursor_hints.get(&key, 0).unwrap_or_default();
        let d = direction.index();
        hint.after_seq[d] = after_seq;
        hint.cursor[d] = cursor;
        hint.valid[d] = 1;
        self.cursor_hints
            .insert(key, hint, 0)
            .map_err(map_err(MAP_CURSOR_HINTS))
    }

    /// Repro: `fd` of `tgid` sends requests; capture its egress whole (when the probes
    /// were loaded with `full_capture`).
    pub fn capture_whole(&mut self, tgid: u32, fd: u32) -> Result<(), KernelError> {
        self.full_capture_fds
            .insert(FdKey { tgid, fd }, 1, 0)
            .map_err(map_err(MAP_FULL_CAPTURE_FDS))
    }

    pub fn stop_capture_whole(&mut self, tgid: u32, fd: u32) -> Result<(), KernelError> {
        ignore_missing(self.full_capture_fds.remove(&FdKey { tgid, fd }))
            .map_err(map_err(MAP_FULL_CAPTURE_FDS))
    }

    /// Forgets the hints of a stream that is in sync (or closed).
    pub fn clear_cursor_hint(&mut self, tgid: u32, fd: u32) -> Result<(), KernelError> {
        ignore_missing(self.cursor_hints.remove(&FdKey { tgid, fd }))
            .map_err(map_err(MAP_CURSOR_HINTS))
    }

    /// The kernel's frame cursors of a watched fd (index `Direction::index`):
    /// `Some(bytes to the next header)`, or None where unknown or mid-header.
    pub fn fd_cursors(&self, tgid: u32, fd: u32) -> Option<[Option<u32>; 2]> {
        let s = self.watched_fds.get(&FdKey { tgid, fd }, 0).ok()?;
        let one = |d: usize| {
            (s.cursor[d] != CURSOR_UNKNOWN && s.partial_len[d] == 0).then_some(s.cursor[d])
        };
        Some([one(0), one(1)])
    }

    /// Stops capturing (tgid, fd) (no error if it was not watched).
    pub fn unwatch_fd(&mut self, tgid: u32, fd: u32) -> Result<(), KernelError> {
        ignore_missing(self.watched_fds.remove(&FdKey { tgid, fd }))
            .map_err(map_err(MAP_WATCHED_FDS))
    }

    /// Drops every watched fd of `tgid` (after its Exit: the kernel sees no close()).
    /// Returns how many were removed.
    pub fn forget_tgid(&mut self, tgid: u32) -> usize {
        let keys: Vec<FdKey> = self
            .watched_fds
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for k in &keys {
            let _ = self.cursor_hints.remove(k);
        }
        // Its exit: a stale bit would only cost the next process with this pid a
        // register read and a lookup per read or write.
        let _ = set_pid_bit(&mut self.io_pids, tgid, false);
        keys.iter()
            .filter(|k| self.watched_fds.remove(k).is_ok())
            .count()
    }

    /// The kernel's running totals of a watched fd.
    pub fn fd_totals(&self, tgid: u32, fd: u32) -> Option<FdTotals> {
        self.watched_fds
            .get(&FdKey { tgid, fd }, 0)
            .ok()
            .map(|s| FdTotals::from_arrays(s.bytes, s.calls))
    }

    /// Number of watched fds (for `check` and self-metrics).
    pub fn watched_fd_count(&self) -> usize {
        self.watched_fds.keys().filter(Result::is_ok).count()
    }
}

/// A removal of a key that is already gone succeeds: the kernel removes fds it sees
/// closed, and a process's entries may go before user space gets to them.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}
