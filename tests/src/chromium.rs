//! Headless Chromium (Debian's package) for DOM assertions on the live page.
use std::path::Path;
use std::process::{Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

pub fn chromium(dir: &Path, profile: &str, mode: &[String], url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's `chromium` package (cargo xtask setup)"
    );
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1600",
        ])
        .arg(format!("--user-data-dir={}", dir.join(profile).display()))
        .args(mode)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("running chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
