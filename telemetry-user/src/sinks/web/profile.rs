//! The profiler on the HTTP endpoint:
//! - `/debug/pprof/profile?seconds=N&function=F&pool=P`: samples the next N seconds
//!   (default 30, at most 300) and answers a gzipped pprof profile, as Go's
//!   `net/http/pprof` does, so `go tool pprof` and Pyroscope/Grafana tooling read it;
//! - `/debug/pprof/flamegraph.svg?seconds=N&function=F`: an SVG flame graph of the
//!   last N seconds (default 60) of samples, drawn at once (the live page's graphs);
//! - both take `mode=cpu` (default) or `mode=off-cpu` (where the threads blocked,
//!   weighted by the time blocked);
//! - `/debug/pprof/functions`: functions with samples in the last minute, JSON.
use crate::profiler::{output, pprof, Filter, ProfileHandle, ProfileMode};
use std::collections::BTreeMap;
use std::time::Duration;

/// Parsed query string (no percent-decoding beyond `+` and `%XX`).
fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn filter(q: &BTreeMap<String, String>, since_ns: u64) -> Result<Filter, Reply> {
    let mode = q.get("mode").map_or("", String::as_str);
    let Some(mode) = ProfileMode::parse(mode) else {
        return Err(Reply::Err(400, format!("mode {mode:?}: cpu or off-cpu\n")));
    };
    Ok(Filter {
        function: q.get("function").filter(|f| !f.is_empty()).cloned(),
        pool: q.get("pool").filter(|p| !p.is_empty()).cloned(),
        since_ns,
        mode,
    })
}

fn seconds(q: &BTreeMap<String, String>, default: u64, max: u64) -> u64 {
    q.get("seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// (content type, body) or (404/500 text).
pub enum Reply {
    Ok(&'static str, Vec<u8>),
    Err(u16, String),
}

pub async fn pprof_profile(h: &ProfileHandle, q: Option<&str>) -> Reply {
    let q = query(q);
    let secs = seconds(&q, 30, 300);
    let since = crate::kernel::monotonic_now_ns();
    let start_unix = crate::kernel::monotonic_to_unix_ns(since);
    let f = match filter(&q, since) {
        Ok(f) => f,
        Err(e) => return e,
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Calls that ended just now are attributed a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stacks = h.stacks(&f);
    let p = pprof::build(
        stacks.iter().map(|(s, n, w)| (&s[..], *n, *w)),
        f.mode,
        h.sample_hz,
        start_unix,
        secs * 1_000_000_000,
    );
    match pprof::encode_gz(&p) {
        Ok(b) => Reply::Ok("application/octet-stream", b),
        Err(e) => Reply::Err(500, format!("{e}\n")),
    }
}

pub fn flamegraph(h: &ProfileHandle, q: Option<&str>) -> Reply {
    let q = query(q);
    let secs = seconds(&q, 60, 3600);
    let since = crate::kernel::monotonic_now_ns().saturating_sub(secs * 1_000_000_000);
    let f = match filter(&q, since) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let stacks = h.stacks(&f);
    let title = format!(
        "{}{} ({} samples, last {secs} s)",
        f.function.as_deref().unwrap_or("all workers"),
        match f.mode {
            ProfileMode::Cpu => "",
            ProfileMode::OffCpu => " off CPU",
        },
        stacks.iter().map(|(_, n, _)| n).sum::<u64>()
    );
    let folded = output::folded_in(stacks.iter().map(|(s, _, w)| (&s[..], *w)), f.mode);
    if folded.is_empty() {
        return Reply::Err(404, "no samples\n".into());
    }
    match output::svg(&folded, &title, f.mode) {
        Ok(b) => Reply::Ok("image/svg+xml", b),
        Err(e) => Reply::Err(500, format!("{e}\n")),
    }
}

pub fn functions(h: &ProfileHandle) -> Reply {
    let since = crate::kernel::monotonic_now_ns().saturating_sub(60_000_000_000);
    let counts = h.function_counts(since);
    match serde_json::to_vec(&counts) {
        Ok(b) => Reply::Ok("application/json", b),
        Err(e) => Reply::Err(500, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse() {
        let q = query(Some("seconds=5&function=snakebridge.call&pool=gpu%20a+b"));
        assert_eq!(q["seconds"], "5");
        assert_eq!(q["function"], "snakebridge.call");
        assert_eq!(q["pool"], "gpu a b");
        assert_eq!(seconds(&q, 30, 300), 5);
        assert_eq!(seconds(&query(Some("seconds=9999")), 30, 300), 300);
        assert_eq!(decode("100%"), "100%");
        let f = filter(&query(Some("mode=off-cpu&function=io")), 0);
        assert!(f.is_ok_and(|f| f.mode == ProfileMode::OffCpu));
        assert!(filter(&query(Some("mode=wall")), 0).is_err());
    }
}
