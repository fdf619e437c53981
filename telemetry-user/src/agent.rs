//! The pipeline: kernel events -> discovery/enrichment -> events on the bus -> sinks.
use crate::config::Config;
use std::time::Duration;

pub struct RunOptions {
    pub duration: Option<Duration>,
}

pub struct Agent {
    _config: Config,
}

impl Agent {
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        anyhow::bail!("the pipeline is being wired (config: {:?})", config.output.format)
    }
    pub async fn run(self, _opts: RunOptions) -> anyhow::Result<()> {
        Ok(())
    }
}
