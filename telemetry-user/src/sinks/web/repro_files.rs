//! `/repro/<file>`: the repro scripts the live page links to, served from the
//! `[repro] directory` to loopback clients only (they hold the failed calls' payloads).
use super::{full, plain, Body};
use crate::repro::FILE_PREFIX;
use hyper::StatusCode;
use std::path::Path;

pub(super) fn serve(dir: Option<&Path>, name: &str, peer_loopback: bool) -> hyper::Response<Body> {
    let Some(dir) = dir else {
        return plain(StatusCode::NOT_FOUND, "repro scripts are off\n");
    };
    if !peer_loopback {
        return plain(
            StatusCode::FORBIDDEN,
            "repro scripts are served to loopback clients only\n",
        );
    }
    // A plain file name of ours: no separators, no `..`.
    let ok = name.starts_with(FILE_PREFIX)
        && name.ends_with(".py")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.contains("..");
    if !ok {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => full(StatusCode::OK, "text/x-python; charset=utf-8", text),
        Err(_) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}
