//! The `--output` file: whole lines or nothing. Sinks write complete events and then
//! flush; this writer holds everything until the flush and, when the file system
//! refuses part of it (full disk, quota), cuts the file back to the last whole line,
//! so a reader never sees a torn JSON line.
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

pub struct WholeLines {
    file: File,
    /// Bytes of the file known to end on a line boundary.
    committed: u64,
    pending: Vec<u8>,
}

impl WholeLines {
    pub fn create(path: &Path) -> io::Result<WholeLines> {
        Ok(WholeLines::new(File::create(path)?))
    }

    pub fn new(mut file: File) -> WholeLines {
        let committed = file.seek(SeekFrom::End(0)).unwrap_or(0);
        WholeLines {
            file,
            committed,
            pending: Vec::with_capacity(64 * 1024),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if let Err(e) = self.file.write_all(&self.pending) {
            // Part of the batch may be on disk: take it back, then report.
            let _ = self.file.set_len(self.committed);
            let _ = self.file.seek(SeekFrom::Start(self.committed));
            self.pending.clear();
            return Err(e);
        }
        self.committed += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

impl Write for WholeLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole lines go out; a line still being written waits for the next flush.
        let end = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(()),
        };
        // The buffer is kept (its capacity: no regrowth every batch).
        let rest = self.pending[end..].to_vec();
        self.pending.truncate(end);
        let result = self.write_pending();
        self.pending.extend_from_slice(&rest);
        result?;
        self.file.flush()
    }
}

impl Drop for WholeLines {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_whole_lines_at_flush() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let mut w = WholeLines::create(&path).expect("create");
        w.write_all(b"{\"a\":1}\n{\"b\"").expect("write");
        assert_eq!(
            std::fs::read(&path).expect("read").len(),
            0,
            "nothing before flush"
        );
        w.flush().expect("flush");
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"a\":1}\n");
        w.write_all(b":2}\n").expect("write");
        drop(w);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"{\"a\":1}\n{\"b\":2}\n"
        );
    }

    /// /dev/full refuses every write with ENOSPC: the error comes back, nothing is kept.
    #[test]
    fn a_refused_write_is_an_error_and_keeps_no_part_line() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut w = WholeLines::new(file);
        w.write_all(b"{\"a\":1}\n").expect("buffered");
        let err = w.flush().expect_err("ENOSPC");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
