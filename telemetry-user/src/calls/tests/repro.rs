//! The tracker's repro hook: a failed call gets one script with its payload and the
//! worker's traceback; a successful one none.
use super::*;
use crate::repro::{Repro, ReproConfig};

#[test]
fn a_failed_call_gets_one_script_and_a_successful_one_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repro_dir = dir.path().join("repro");
    let c = grpc_conn(9);
    let err = r#"{"type":"ValueError","message":"boom","traceback":"Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"}"#;
    let (ev, _) = run(cfg(), |t| {
        let bus = t.bus_for_tests();
        let rc = ReproConfig {
            directory: repro_dir.clone(),
            ..ReproConfig::default()
        };
        t.set_repro(Repro::start(rc, bus).expect("repro on"));
        unary(
            t,
            &c,
            1,
            &tool_request("fail", &[("message", "\"boom\"")]),
            &tool_response(false, err),
            M,
        );
        unary(
            t,
            &c,
            3,
            &tool_request("echo", &[("value", "\"hi\"")]),
            &tool_response(true, ""),
            M,
        );
        // The writer thread announces the script on the bus.
        for _ in 0..200 {
            if crate::repro::writer::list_scripts(&repro_dir).is_ok_and(|s| !s.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
    let scripts = crate::repro::writer::list_scripts(&repro_dir).expect("scripts");
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    let text = std::fs::read_to_string(&scripts[0]).expect("read");
    assert!(text.contains("#   ValueError: boom"), "{text}");
    assert!(text.contains("\"message\": \"boom\""), "{text}");
    let written = named(&ev, crate::repro::REPRO_WRITTEN);
    assert_eq!(written.len(), 1);
    assert_eq!(meta(written[0], "correlation_id"), Some("c-1"));
}
