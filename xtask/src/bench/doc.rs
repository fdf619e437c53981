//! docs/benchmarks.md: the text around the results is kept, the results section
//! between the markers is replaced on each `--write-doc`.
use anyhow::{Context, Result};
use std::path::Path;

const TEMPLATE: &str = "# Benchmarks\n\n\
The figures below are written by `cargo xtask bench --write-doc`; see that command's \
help for the options.\n";

/// Which results: saturation rounds or a rate run (each has its own section).
#[derive(Clone, Copy)]
pub enum Section {
    Saturation,
    Rate,
}

impl Section {
    fn markers(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Section::Saturation => (
                "## Results at saturation",
                "<!-- bench:results:begin -->",
                "<!-- bench:results:end -->",
            ),
            Section::Rate => (
                "## Results at a fixed rate",
                "<!-- bench:rate:begin -->",
                "<!-- bench:rate:end -->",
            ),
        }
    }
}

/// `doc` with everything between the section's markers replaced by `results`.
pub fn replace_results(doc: &str, section: Section, results: &str) -> String {
    let (title, begin, end) = section.markers();
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{begin}\n{}\n{end}{}",
            &doc[..b],
            results.trim_end(),
            &doc[e + end.len()..]
        ),
        // No markers yet: a new section at the end.
        _ => format!(
            "{}\n{title}\n\n{begin}\n{}\n{end}\n",
            doc.trim_end(),
            results.trim_end()
        ),
    }
}

pub fn write_results(path: &Path, section: Section, results: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_else(|_| TEMPLATE.to_string());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let body = format!("Run of {}\n\n{results}", date.trim());
    std::fs::write(path, replace_results(&doc, section, &body))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_between_markers_are_replaced_and_the_rest_kept() {
        let once = replace_results(TEMPLATE, Section::Saturation, "first");
        assert!(once.contains("first") && once.starts_with("# Benchmarks"));
        let doc = once.replace(
            "## Results at saturation",
            "## Results at saturation\n\nNote.",
        );
        let twice = replace_results(&doc, Section::Saturation, "second");
        assert!(twice.contains("second") && !twice.contains("first"));
        assert!(twice.contains("Note."));
        let rate = replace_results(&twice, Section::Rate, "at 200/s");
        assert!(rate.contains("second") && rate.contains("at 200/s"));
        let rate2 = replace_results(&rate, Section::Rate, "at 300/s");
        assert!(rate2.contains("second") && rate2.contains("at 300/s") && !rate2.contains("200/s"));
    }
}
