//! Agent configuration: TOML with serde defaults; command-line flags override it.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
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
    /// Python stack sampling (`sampling`, `sample_hz`, `window_s`).
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
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            bytes: 4096,
            ring_buffer_bytes: 16 << 20,
            decode_once: true,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
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
    fn out_of_range_values_are_rejected() {
        assert!(Config::from_toml("[capture]\nbytes = 0\n").is_err());
        assert!(Config::from_toml("[capture]\nbytes = 100000\n").is_err());
        assert!(Config::from_toml("[capture]\nring_buffer_bytes = 3000\n").is_err());
    }
}
