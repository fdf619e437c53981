//! docs/benchmarks.md: the text around the results is kept, the results section
//! between the markers is replaced on each `--write-doc`.
use anyhow::{Context, Result};
use std::path::Path;

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

const TEMPLATE: &str = "# Benchmarks\n\n\
The figures below are written by `cargo xtask bench --write-doc`; see that command's \
help for the options.\n\n## Results\n\n<!-- bench:results:begin -->\n<!-- bench:results:end -->\n";

/// `doc` with everything between the markers replaced by `results`.
pub fn replace_results(doc: &str, results: &str) -> String {
    let (head, tail) = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => (&doc[..b], &doc[e + END.len()..]),
        // No markers: the results go at the end.
        _ => (doc, "\n"),
    };
    format!("{head}{BEGIN}\n{}\n{END}{tail}", results.trim_end())
}

pub fn write_results(path: &Path, results: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_else(|_| TEMPLATE.to_string());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let body = format!("Run of {}\n\n{results}", date.trim());
    std::fs::write(path, replace_results(&doc, &body))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_between_markers_are_replaced_and_the_rest_kept() {
        let once = replace_results(TEMPLATE, "first");
        assert!(once.contains("first") && once.starts_with("# Benchmarks"));
        let doc = once.replace("## Results", "## Results\n\nHand-written note.");
        let twice = replace_results(&doc, "second");
        assert!(twice.contains("second") && !twice.contains("first"));
        assert!(twice.contains("Hand-written note."));
        assert!(twice.ends_with(&format!("{END}\n")));
    }
}
