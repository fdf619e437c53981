//! Profile outputs: folded stacks (Brendan Gregg's format), SVG flame graphs
//! (inferno) and gzipped pprof.
use super::error::ProfilerError;
use super::stacks::Frame;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileFormat {
    Pprof,
    Folded,
    Svg,
}

/// `frame;frame;frame count` lines (root first), sorted.
pub fn folded<'a>(stacks: impl Iterator<Item = &'a [Frame]>) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for frames in stacks {
        let key = frames
            .iter()
            .map(|f| f.name().replace([';', '\n'], "_"))
            .collect::<Vec<_>>()
            .join(";");
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| format!("{k} {n}\n"))
        .collect()
}

/// An SVG flame graph of folded stacks.
pub fn svg(folded: &str, title: &str) -> Result<Vec<u8>, ProfilerError> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".into();
    let mut out = Vec::new();
    if folded.is_empty() {
        return Err(ProfilerError::Output("no samples to draw".into()));
    }
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out)
        .map_err(|e| ProfilerError::Output(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> Frame {
        Frame::Native {
            name: name.into(),
            library: "x".into(),
        }
    }

    #[test]
    fn folded_counts_identical_stacks() {
        let a = vec![n("main"), n("spin")];
        let b = vec![n("main"), n("dot;x")];
        let stacks = [a.as_slice(), b.as_slice(), a.as_slice()];
        let f = folded(stacks.iter().copied());
        assert_eq!(f, "main;dot_x 1\nmain;spin 2\n");
        let s = String::from_utf8(svg(&f, "t").expect("svg")).expect("utf8");
        assert!(s.contains("<svg") && s.contains("spin"));
    }
}
