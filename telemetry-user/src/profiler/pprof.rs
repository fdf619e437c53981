//! pprof output: the `perftools.profiles.Profile` message (google/pprof
//! `proto/profile.proto`; only the fields written here, same numbers and types),
//! encoded with prost and gzipped as pprof tools expect.
use super::offcpu::ProfileMode;
use super::stacks::Frame;
use std::borrow::Borrow;
use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

#[derive(Default)]
struct Builder {
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, i64), u64>,
    p: Profile,
}

impl Builder {
    fn s(&mut self, v: &str) -> i64 {
        if let Some(i) = self.strings.get(v) {
            return *i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(v.to_string());
        self.strings.insert(v.to_string(), i);
        i
    }

    fn location(&mut self, f: &Frame) -> u64 {
        let (name, file, line) = match f {
            Frame::Python {
                function,
                file,
                line,
                ..
            } => (function.as_str(), file.as_str(), i64::from(*line)),
            Frame::Native { name, library } => (name.as_str(), library.as_str(), 0),
        };
        let (name, file) = (self.s(name), self.s(file));
        let next = self.functions.len() as u64 + 1;
        let fid = *self.functions.entry((name, file)).or_insert(next);
        if fid == next {
            self.p.function.push(Function {
                id: fid,
                name,
                system_name: name,
                filename: file,
            });
        }
        let next = self.locations.len() as u64 + 1;
        let lid = *self.locations.entry((fid, line)).or_insert(next);
        if lid == next {
            self.p.location.push(Location {
                id: lid,
                line: vec![Line {
                    function_id: fid,
                    line,
                }],
            });
        }
        lid
    }
}

/// A profile of `stacks` (root first, with their sample counts and weights: see
/// `ProfileHandle::stacks`). CPU: each sample worth one period of `1/sample_hz` s,
/// values [samples count, cpu nanoseconds]. Off-CPU: values [samples count, off_cpu
/// nanoseconds] (the time the threads spent blocked there).
pub fn build<'a, F: Borrow<Frame> + 'a>(
    stacks: impl Iterator<Item = (&'a [F], u64, u64)>,
    mode: ProfileMode,
    sample_hz: u64,
    time_unix_ns: u64,
    duration_ns: u64,
) -> Profile {
    let mut b = Builder::default();
    b.s("");
    let period = match mode {
        ProfileMode::Cpu => 1_000_000_000 / sample_hz.max(1) as i64,
        ProfileMode::OffCpu => 1,
    };
    let samples = (b.s("samples"), b.s("count"));
    let value = match mode {
        ProfileMode::Cpu => (b.s("cpu"), b.s("nanoseconds")),
        ProfileMode::OffCpu => (b.s("off_cpu"), b.s("nanoseconds")),
    };
    b.p.sample_type = vec![
        ValueType {
            r#type: samples.0,
            unit: samples.1,
        },
        ValueType {
            r#type: value.0,
            unit: value.1,
        },
    ];
    b.p.period_type = Some(ValueType {
        r#type: value.0,
        unit: value.1,
    });
    b.p.period = period;
    b.p.time_nanos = time_unix_ns as i64;
    b.p.duration_nanos = duration_ns as i64;
    let mut merged: HashMap<Vec<u64>, (i64, i64)> = HashMap::new();
    for (frames, count, weight) in stacks {
        let ids: Vec<u64> = frames
            .iter()
            .rev()
            .map(|f| b.location(f.borrow()))
            .collect();
        let v = merged.entry(ids).or_default();
        v.0 += count as i64;
        v.1 += match mode {
            ProfileMode::Cpu => period * count as i64,
            ProfileMode::OffCpu => weight as i64,
        };
    }
    let mut rows: Vec<(Vec<u64>, (i64, i64))> = merged.into_iter().collect();
    rows.sort();
    for (ids, (n, v)) in rows {
        b.p.sample.push(Sample {
            location_id: ids,
            value: vec![n, v],
        });
    }
    b.p
}

/// Gzipped encoding (what `go tool pprof` reads).
pub fn encode_gz(p: &Profile) -> std::io::Result<Vec<u8>> {
    use prost::Message;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::io::Read;

    #[test]
    fn round_trip_keeps_totals_and_names() {
        let a = vec![
            Frame::Python {
                function: "demo_hot.hot_path".into(),
                library: "demo_hot".into(),
                file: "/d/demo_hot.py".into(),
                line: 10,
            },
            Frame::Python {
                function: "demo_hot.spin".into(),
                library: "demo_hot".into(),
                file: "/d/demo_hot.py".into(),
                line: 3,
            },
        ];
        let b = vec![
            a[0].clone(),
            Frame::Native {
                name: "dgemm [libblas.so]".into(),
                library: "numpy".into(),
            },
        ];
        let stacks = [a.as_slice(), a.as_slice(), b.as_slice()];
        let p = build(
            stacks.iter().map(|s| (*s, 1, 1)),
            ProfileMode::Cpu,
            100,
            1,
            2,
        );
        let gz = encode_gz(&p).expect("encode");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        let back = Profile::decode(&raw[..]).expect("decode");
        assert_eq!(back, p);
        let total: i64 = back.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 3);
        assert_eq!(
            back.sample.iter().map(|s| s.value[1]).sum::<i64>(),
            3 * 10_000_000
        );
        // The leaf comes first.
        let spin = back
            .sample
            .iter()
            .find(|s| s.value[0] == 2)
            .expect("spin row");
        let loc = &back.location[(spin.location_id[0] - 1) as usize];
        let func = &back.function[(loc.line[0].function_id - 1) as usize];
        assert_eq!(back.string_table[func.name as usize], "demo_hot.spin");
        assert_eq!(back.string_table[0], "");
    }

    #[test]
    fn off_cpu_profiles_carry_the_blocked_nanoseconds() {
        let a = vec![Frame::Native {
            name: "[off-cpu: read]".into(),
            library: "kernel".into(),
        }];
        // The second stands for 4 episodes merged.
        let stacks = [(a.as_slice(), 1, 7_000), (a.as_slice(), 4, 3_000)];
        let p = build(stacks.iter().copied(), ProfileMode::OffCpu, 99, 1, 2);
        let st = &p.string_table;
        assert_eq!(st[p.sample_type[1].r#type as usize], "off_cpu");
        assert_eq!(st[p.sample_type[1].unit as usize], "nanoseconds");
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, vec![5, 10_000]);
    }
}
