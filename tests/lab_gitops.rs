//! The GitOps pipeline's steps (`examples/gitops/pipeline.sh`, which the GitLab CI and GitHub
//! Actions examples call) run as a pipeline would, against the real lab: validate on the merge
//! request, the markdown plan to post and the JSON plan to keep, apply of exactly the reviewed
//! plan on merge, and the same plan refused once stale.
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs it as root, one lab test at a time.

mod common;

use std::path::Path;
use std::process::Command;

use common::sk::*;
use common::*;

fn pipeline(state: &Path, args: &[&str]) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("sh")
        .arg(root.join("examples/gitops/pipeline.sh"))
        .args(args)
        .env("SPOOLKEEPER", env!("CARGO_BIN_EXE_spoolkeeper"))
        .env("SPOOLKEEPER_STATE_DIR", state)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pipeline.sh")
        .into()
}

/// The lab spec with hour-scale schedules (nothing becomes due while the pipeline runs), as
/// `clusters/lab.yaml` of a specs repository.
fn repo_spec(repo: &Path, active: &str) {
    let text = std::fs::read_to_string(lab_spec())
        .unwrap()
        .replace("active: node-a", &format!("active: {active}"))
        .replace("    every: 1m\n    keep:", "    every: 1h\n    keep:")
        .replace("    every: 1m\n    rpo: 10m", "    every: 1h\n    rpo: 2h");
    assert!(text.contains("every: 1h\n    rpo: 2h"));
    std::fs::create_dir_all(repo.join("clusters")).unwrap();
    std::fs::write(repo.join("clusters/lab.yaml"), text).unwrap();
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn the_pipeline_plans_on_review_and_applies_exactly_the_reviewed_plan_on_merge() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let (repo, state) = (dir.path().join("repo"), dir.path().join("state"));
    repo_spec(&repo, "node-a");
    let clusters = repo.join("clusters");
    let clusters = clusters.to_str().unwrap();
    let plans = dir.path().join("plans");
    let plans = plans.to_str().unwrap();
    // the main branch, applied
    let first = pipeline(&state, &["plan", clusters, plans]);
    assert_eq!(first.code, Some(0), "{first}");
    let applied = pipeline(&state, &["apply", clusters, plans]);
    assert_eq!(applied.code, Some(0), "{applied}");

    // --- a merge request with a broken spec: validate fails, naming file:line:col
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let text = std::fs::read_to_string(repo.join("clusters/lab.yaml")).unwrap();
    std::fs::write(
        broken.join("lab.yaml"),
        text.replace("rpo: 2h", "rpo: 2 hours"),
    )
    .unwrap();
    let v = pipeline(&state, &["validate", broken.to_str().unwrap()]);
    assert_eq!(v.code, Some(1), "{v}");
    assert!(
        v.stderr.contains("lab.yaml:") && v.stderr.contains("rpo"),
        "{v}"
    );

    // --- the merge request: the one-line switchover edit; validate, plan
    repo_spec(&repo, "node-b");
    let v = pipeline(&state, &["validate", clusters]);
    assert_eq!(v.code, Some(0), "{v}");
    let p = pipeline(&state, &["plan", clusters, plans]);
    assert_eq!(p.code, Some(0), "{p}");
    let md = std::fs::read_to_string(Path::new(plans).join("lab.md")).unwrap();
    assert!(
        md.contains("stop") && md.contains("node-b") && md.contains('|'),
        "the comment to post must be the markdown plan of the switchover:\n{md}"
    );
    let json = std::fs::read_to_string(Path::new(plans).join("lab.json")).unwrap();
    let reviewed = json.clone();
    assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
    // nothing changed on any host by planning
    assert_eq!(zfs_prop("node-a", "zdata/imap/students", "readonly"), "off");

    // --- merged: apply exactly the reviewed plan
    let a = pipeline(&state, &["apply", clusters, plans]);
    assert_eq!(a.code, Some(0), "{a}");
    assert_eq!(zfs_prop("node-b", "zdata/imap/students", "readonly"), "off");
    assert_eq!(zfs_prop("node-a", "zdata/imap/students", "readonly"), "on");
    assert_eq!(
        exec(
            "node-b",
            &["/var/lib/sk-lab/bin/sk-instance", "status", "students"]
        )
        .status
        .code(),
        Some(0)
    );

    // --- the same reviewed plan again (a re-run of the merge job): the hosts changed since,
    // it is refused and nothing runs
    std::fs::write(Path::new(plans).join("lab.json"), &reviewed).unwrap();
    let before = journal(&state).len();
    let again = pipeline(&state, &["apply", clusters, plans]);
    assert_eq!(again.code, Some(1), "{again}");
    assert!(again.stderr.contains("stale plan"), "{again}");
    assert_eq!(journal(&state).len(), before, "a stale plan ran actions");
    // what follows a switchover (the new active's first snapshot, holds moved, the old
    // copy's retention) is the next pipeline's (or the controller's) to do: applies converge
    let spec = repo.join("clusters/lab.yaml");
    let mut last = None;
    for _ in 0..4 {
        assert_eq!(sk(&state, &spec, &["apply"]).code, Some(0));
        let p = sk(&state, &spec, &["plan"]);
        if p.code == Some(0) {
            last = None;
            break;
        }
        last = Some(p);
    }
    assert!(
        last.is_none(),
        "no convergence in 4 applies: {}",
        last.unwrap()
    );
}
