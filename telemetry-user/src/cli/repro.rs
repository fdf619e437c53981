//! `snakepit-agent repro list|show ID`: the repro scripts written for failed calls.
use crate::config::Config;
use crate::repro::writer::list_scripts;
use crate::repro::ReproError;
use clap::{Args, Subcommand};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReproArgs {
    /// TOML configuration file (its `[repro] directory`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The scripts' directory (overrides the configuration).
    #[arg(long, value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ReproCommand,
}

#[derive(Subcommand, Debug)]
pub enum ReproCommand {
    /// One line per script: id, time, function, error, file.
    List,
    /// Prints a script: ID is its number in `list`, its file name, or a correlation id.
    Show { id: String },
}

pub fn run(args: ReproArgs) -> anyhow::Result<i32> {
    let dir = match (args.dir, &args.config) {
        (Some(d), _) => d,
        (None, Some(c)) => Config::load(c)?.repro.directory,
        (None, None) => Config::default().repro.directory,
    };
    let scripts = match list_scripts(&dir) {
        Ok(s) => s,
        Err(ReproError::List { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    match args.command {
        ReproCommand::List => {
            if scripts.is_empty() {
                println!("no repro scripts in {}", dir.display());
            }
            for (i, p) in scripts.iter().enumerate() {
                let h = header(p);
                println!(
                    "{:>4}  {}  {}  {}  {}",
                    i + 1,
                    h.when.as_deref().unwrap_or("?"),
                    h.call.as_deref().unwrap_or("?"),
                    h.error.as_deref().unwrap_or("?"),
                    p.display()
                );
            }
            Ok(0)
        }
        ReproCommand::Show { id } => {
            let path = find(&scripts, &id).ok_or(ReproError::NotFound(id))?;
            print!("{}", std::fs::read_to_string(path)?);
            Ok(0)
        }
    }
}

/// A script by list number, file name (or its prefix), or correlation id.
fn find<'a>(scripts: &'a [PathBuf], id: &str) -> Option<&'a PathBuf> {
    if let Ok(n) = id.parse::<usize>() {
        if let Some(p) = n.checked_sub(1).and_then(|i| scripts.get(i)) {
            return Some(p);
        }
    }
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    scripts
        .iter()
        .find(|p| name(p) == id || name(p).starts_with(id))
        .or_else(|| {
            let safe: String = id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            scripts
                .iter()
                .find(|p| name(p).ends_with(&format!("_{safe}.py")))
        })
}

#[derive(Default)]
struct Header {
    when: Option<String>,
    call: Option<String>,
    error: Option<String>,
}

/// The docstring lines `list` shows.
fn header(path: &Path) -> Header {
    let mut h = Header::default();
    let Ok(f) = std::fs::File::open(path) else {
        return h;
    };
    for line in std::io::BufReader::new(f)
        .lines()
        .take(40)
        .map_while(Result::ok)
    {
        if let Some(v) = line.strip_prefix("When: ") {
            h.when = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("Call: ") {
            h.call = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("Error: ") {
            h.error = Some(v.to_string());
        } else if line == "\"\"\"" && h.error.is_some() {
            break;
        }
    }
    h
}
