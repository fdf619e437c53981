//! Agent configuration: TOML with serde defaults; command-line flags override it.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message and not a `source`: `{:#}` would print it twice.
    #[error("reading config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("parsing config {path}: {cause}")]
    Parse {
        path: PathBuf,
        cause: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub capture: CaptureConfig,
    pub discovery: DiscoveryConfig,
    pub output: OutputConfig,
    /// Call reconstruction: thresholds, sampling, limits.
    pub calls: crate::calls::TrackerConfig,
    /// `/metrics` (Prometheus) and the live page.
    pub http: crate::sinks::web::HttpConfig,
    /// OpenTelemetry (OTLP) export of call spans and metrics.
    pub otlp: crate::sinks::otlp::OtlpConfig,
    /// GPU memory sampling (NVML).
    pub gpu: crate::gpu::GpuConfig,
    /// Repro scripts for failed calls (docs/repro.md).
    pub repro: crate::repro::ReproConfig,
    /// Inside the workers: Python stack sampling (`sampling`, `sample_hz`, `window_s`)
    /// and the per-call serialization and scheduling split (`serialization`,
    /// `scheduling`).
    pub profile: crate::profiler::ProfileConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Payload bytes copied per syscall (at most 4096).
    pub bytes: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Decode each direction of a gRPC connection once, from the sender's writes; the
    /// receiver's reads only time it (frame headers, no payload). Off: both ends copy
    /// and decode everything (costs twice as much; for debugging the agent).
    pub decode_once: bool,
    /// Keep the kernel's run-time statistics of BPF programs on (BPF_ENABLE_STATS) while
    /// the agent runs, so its stats event reports each program's runs and mean run time
    /// (`program_run_time`). The switch is the kernel's, for every BPF program on the
    /// host: each run then reads the clock twice (about 85 ns per hooked syscall on a
    /// KVM guest, docs/benchmarks.md), so it is off unless asked for.
    pub program_stats: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            bytes: 4096,
            ring_buffer_bytes: crate::kernel::DEFAULT_RING_BUFFER_BYTES,
            decode_once: true,
            program_stats: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Extra substrings that mark a process as a Snakepit worker when its command
    /// line holds one (for deployments whose worker script has another name).
    pub worker_cmdline_patterns: Vec<String>,
    /// Extra substrings that mark a process as a Snakepit BEAM.
    pub beam_cmdline_patterns: Vec<String>,
    /// Explicit pids to treat as workers / BEAMs, whatever their command line.
    pub worker_pids: Vec<u32>,
    pub beam_pids: Vec<u32>,
    /// Full /proc rescan interval: a safety net; exec/exit events do the real work.
    pub rescan_interval_ms: u64,
    /// proc root (tests point it elsewhere).
    pub proc_root: PathBuf,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            worker_cmdline_patterns: Vec::new(),
            beam_cmdline_patterns: Vec::new(),
            worker_pids: Vec::new(),
            beam_pids: Vec::new(),
            rescan_interval_ms: 10_000,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub format: OutputFormat,
    /// Write events here instead of stdout.
    pub path: Option<PathBuf>,
    /// Per-connection I/O summaries and agent stats are emitted this often.
    pub summary_interval_ms: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: OutputFormat::Text,
            path: None,
            summary_interval_ms: 10_000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { cause, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                cause,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            path: PathBuf::new(),
            cause,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.profile.validate().map_err(ConfigError::Invalid)?;
        self.gpu
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let max = telemetry_common::MAX_CAPTURE as u32;
        if self.capture.bytes == 0 || self.capture.bytes > max {
            return Err(ConfigError::Invalid(format!(
                "capture.bytes must be 1..={max}, got {}",
                self.capture.bytes
            )));
        }
        let ring = self.capture.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            return Err(ConfigError::Invalid(format!(
                "capture.ring_buffer_bytes must be a power of two >= 4096, got {ring}"
            )));
        }
        self.validate_calls()?;
        self.validate_otlp()?;
        self.validate_intervals()
    }

    fn validate_calls(&self) -> Result<(), ConfigError> {
        let c = &self.calls;
        // NaN fails every comparison: a NaN rate would silently drop every call.
        if !(0.0..=1.0).contains(&c.sample_rate) {
            return Err(ConfigError::Invalid(format!(
                "calls.sample_rate must be a number in 0.0..=1.0, got {}",
                c.sample_rate
            )));
        }
        // (failure_threshold and crash_threshold 0 mean "off".)
        let positive = [
            (
                "calls.max_in_flight_per_conn",
                c.max_in_flight_per_conn as u64,
            ),
            ("calls.max_in_flight", c.max_in_flight as u64),
            ("calls.stale_call_s", c.stale_call_s),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be >= 1, got 0")));
            }
        }
        for (i, rule) in c.ml_rules.iter().enumerate() {
            if rule.tool.is_none() && rule.library.is_none() && rule.function.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "calls.ml_rules[{i}] matches nothing: set tool, or library/function"
                )));
            }
        }
        Ok(())
    }

    /// The endpoint is checked even when OTLP is off, so turning it on later (SIGHUP,
    /// a flag) cannot meet a value that was never looked at.
    fn validate_otlp(&self) -> Result<(), ConfigError> {
        let endpoint = &self.otlp.endpoint;
        let url = url::Url::parse(endpoint).map_err(|e| {
            ConfigError::Invalid(format!("otlp.endpoint {endpoint:?} is not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::Invalid(format!(
                "otlp.endpoint {endpoint:?} must be an http:// or https:// URL with a host"
            )));
        }
        self.otlp
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    fn validate_intervals(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "discovery.rescan_interval_ms",
                self.discovery.rescan_interval_ms,
            ),
            (
                "output.summary_interval_ms",
                self.output.summary_interval_ms,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be >= 1, got 0")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.capture.bytes, 4096);
        assert_eq!(cfg.output.format, OutputFormat::Text);
    }

    #[test]
    fn fields_override_defaults_and_unknown_keys_are_rejected() {
        let cfg = Config::from_toml(
            "[capture]\nbytes = 512\n[discovery]\nworker_pids = [42]\n[output]\nformat = \"json\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.capture.bytes, 512);
        assert_eq!(cfg.discovery.worker_pids, vec![42]);
        assert_eq!(cfg.output.format, OutputFormat::Json);
        assert!(Config::from_toml("[capture]\nbites = 1\n").is_err());
    }

    #[test]
    fn the_documented_example_config_parses() {
        let text = include_str!("../../docs/snakepit-agent.toml");
        let cfg = Config::from_toml(text).expect("docs/snakepit-agent.toml");
        assert_eq!(cfg.http.listen.port(), 9464);
        assert_eq!(cfg.calls.slow_call_ms, 1000);
    }

    #[test]
    fn bad_sample_rates_and_otlp_endpoints_are_rejected_with_their_key() {
        for bad in ["-1.0", "nan", "inf", "1.5"] {
            let err = Config::from_toml(&format!("[calls]\nsample_rate = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("calls.sample_rate"), "{bad}: {err}");
        }
        for ok in ["0.0", "0.25", "1.0"] {
            assert!(Config::from_toml(&format!("[calls]\nsample_rate = {ok}\n")).is_ok());
        }
        for bad in ["not a url", "ftp://x:4317", "localhost:4317", "http://"] {
            let err = Config::from_toml(&format!("[otlp]\nendpoint = {bad:?}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("otlp.endpoint"), "{bad}: {err}");
        }
        assert!(Config::from_toml("[otlp]\nendpoint = \"http://127.0.0.1:4317\"\n").is_ok());
        let err = Config::from_toml("[calls]\nmax_in_flight = 0\n").expect_err("zero");
        assert!(err.to_string().contains("calls.max_in_flight"), "{err}");
        let err = Config::from_toml("[[calls.ml_rules]]\nkind = \"inference\"\n")
            .expect_err("rule without a match");
        assert!(err.to_string().contains("ml_rules[0]"), "{err}");
    }

    #[test]
    fn a_parse_error_names_its_cause_once() {
        use std::error::Error as _;
        let err = Config::from_toml("[capture\n").expect_err("bad toml");
        assert!(err.source().is_none(), "the cause would print twice");
        assert!(err.to_string().contains("parsing config"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(Config::from_toml("[capture]\nbytes = 0\n").is_err());
        assert!(Config::from_toml("[capture]\nbytes = 100000\n").is_err());
        assert!(Config::from_toml("[capture]\nring_buffer_bytes = 3000\n").is_err());
    }
}
