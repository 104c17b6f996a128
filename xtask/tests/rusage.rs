//! The benches' launcher reports a command's own peak memory, not its parent's.

use std::path::Path;

use xtask::rusage::{Launcher, Request};

fn request(dir: &Path, argv: &[&str]) -> Request {
    Request {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        cwd: dir.to_path_buf(),
        env_remove: vec!["RUST_LOG".into()],
        stdout: dir.join("out"),
        stderr: dir.join("err"),
    }
}

#[test]
fn a_launched_command_reports_its_own_peak_memory_and_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    // this process grows to 300 MB: a child forked from it would report at least that
    let mut big = vec![0u8; 300 << 20];
    for i in (0..big.len()).step_by(4096) {
        big[i] = 1;
    }
    let mut l = Launcher::start(Path::new(env!("CARGO_BIN_EXE_xtask"))).expect("launcher");
    let r = l
        .run(&request(
            dir.path(),
            &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
        ))
        .expect("run");
    assert_eq!((r.code, r.error.as_deref()), (Some(3), None));
    assert!(
        r.peak_rss_kib > 0 && r.peak_rss_kib < 64 * 1024,
        "{} KiB",
        r.peak_rss_kib
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("err")).unwrap(),
        "oops\n"
    );
    // a command that grows is measured as it grows (about 100 MB of touched memory)
    let r = l
        .run(&request(dir.path(), &["sh", "-c", "head -c 100000000 /dev/zero | tr '\\0' x > /dev/null; x=$(head -c 100000000 /dev/zero | tr '\\0' y); echo ${#x}"]))
        .expect("run");
    assert_eq!(r.code, Some(0));
    assert!(r.peak_rss_kib > 90 * 1024, "{} KiB", r.peak_rss_kib);
    assert!(r.peak_rss_kib < 290 * 1024, "{} KiB", r.peak_rss_kib);
    // a command that cannot start is an error, not a measurement
    let r = l
        .run(&request(dir.path(), &["/nonexistent/x"]))
        .expect("run");
    assert!(r.error.is_some());
    assert_eq!(big[4096], 1);
}
