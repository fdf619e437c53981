//! Profile outputs: folded stacks (Brendan Gregg's format), SVG flame graphs
//! (inferno) and gzipped pprof.
use super::error::ProfilerError;
use super::offcpu::ProfileMode;
use super::stacks::Frame;
use std::borrow::Borrow;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileFormat {
    Pprof,
    Folded,
    Svg,
}

/// `frame;frame;frame count` lines (root first), sorted; `count` is the sum of the
/// stacks' weights (CPU samples; off-CPU: see `off_cpu_us`).
pub fn folded<'a, F: Borrow<Frame> + 'a>(stacks: impl Iterator<Item = (&'a [F], u64)>) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, weight) in stacks {
        let key = frames
            .iter()
            .map(|f| f.borrow().name().replace([';', '\n'], "_"))
            .collect::<Vec<_>>()
            .join(";");
        *counts.entry(key).or_default() += weight;
    }
    counts
        .into_iter()
        .map(|(k, n)| format!("{k} {n}\n"))
        .collect()
}

/// Off-CPU weights in folded stacks and flame graphs: microseconds (as Brendan
/// Gregg's offcputime), at least 1 so that no blocked stack vanishes.
pub fn off_cpu_us(ns: u64) -> u64 {
    ns.div_ceil(1000).max(1)
}

/// What a flame graph's counts are.
pub fn count_name(mode: ProfileMode) -> &'static str {
    match mode {
        ProfileMode::Cpu => "samples",
        ProfileMode::OffCpu => "us off CPU",
    }
}

/// Folded stacks of (root-first frames, weight) in `mode`'s unit.
pub fn folded_in<'a, F: Borrow<Frame> + 'a>(
    stacks: impl Iterator<Item = (&'a [F], u64)>,
    mode: ProfileMode,
) -> String {
    match mode {
        ProfileMode::Cpu => folded(stacks),
        ProfileMode::OffCpu => folded(stacks.map(|(f, ns)| (f, off_cpu_us(ns)))),
    }
}

/// An SVG flame graph of folded stacks.
pub fn svg(folded: &str, title: &str, mode: ProfileMode) -> Result<Vec<u8>, ProfilerError> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = count_name(mode).into();
    if mode == ProfileMode::OffCpu {
        // Blue, as off-CPU flame graphs usually are.
        opts.colors =
            inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Io);
    }
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
        let f = folded(stacks.iter().map(|s| (*s, 1)));
        assert_eq!(f, "main;dot_x 1\nmain;spin 2\n");
        let s = String::from_utf8(svg(&f, "t", ProfileMode::Cpu).expect("svg")).expect("utf8");
        assert!(s.contains("<svg") && s.contains("spin"));
    }

    #[test]
    fn off_cpu_stacks_weigh_their_microseconds() {
        let a = vec![n("main"), n("[off-cpu: read]")];
        let stacks = [(a.as_slice(), 2_500_000), (a.as_slice(), 1)];
        let f = folded_in(stacks.iter().copied(), ProfileMode::OffCpu);
        assert_eq!(f, "main;[off-cpu: read] 2501\n");
        let s = svg(&f, "t", ProfileMode::OffCpu).expect("svg");
        let s = String::from_utf8(s).expect("utf8");
        assert!(s.contains("us off CPU") && s.contains("[off-cpu: read]"));
    }
}
