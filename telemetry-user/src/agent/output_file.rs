//! The event file the JSON and text sinks write.

/// The event file, emptied, in append mode: after logrotate's `copytruncate` the
/// next line lands at the new end instead of past a hole at the old offset.
pub(super) fn open_output(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // Only a regular file is emptied (a FIFO or /dev/null cannot be).
    if file.metadata()?.is_file() {
        file.set_len(0)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::open_output;
    use std::io::Write;

    #[test]
    fn the_output_is_emptied_and_survives_copytruncate_without_a_hole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "old run\n").expect("write");
        let mut f = open_output(&path).expect("open");
        f.write_all(b"first line\n").expect("write");
        // logrotate's copytruncate empties the file under the writer.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|t| t.set_len(0))
            .expect("truncate");
        f.write_all(b"next\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "next\n");
        assert!(open_output(std::path::Path::new("/dev/null")).is_ok());
    }
}
