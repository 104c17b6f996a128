//! The seed's layout (`examples/univ.yaml`: ezjail instances, each with its own Postfix and
//! Dovecot) validates, and its plan runs every Postfix command of an instance inside the
//! instance's jail.

use std::collections::BTreeMap;
use std::path::Path;

use spoolkeeper::model::{
    Dataset, DatasetKind, InstanceState, NodeObservation, Observation, PostfixObservation,
    Reachability, RunState, UnreachableKind,
};

fn dataset(name: &str, writable: bool) -> Dataset {
    Dataset {
        name: name.into(),
        kind: DatasetKind::Filesystem,
        creation: None,
        guid: Some(7),
        used: Some(1),
        readonly: Some(!writable),
        mounted: Some(writable),
        mountpoint: Some(format!("/{name}")),
        createtxg: None,
        receive_resume_token: None,
        user_properties: BTreeMap::new(),
        other_properties: [
            ("compression", "lz4"),
            ("dedup", "on"),
            (
                "quota",
                if name.ends_with("students") {
                    "8T"
                } else {
                    "4T"
                },
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect(),
        snapshots: Vec::new(),
    }
}

fn node(running: bool) -> NodeObservation {
    let mut n = NodeObservation::unreachable(UnreachableKind::Other, "");
    n.reachability = Reachability::Reachable;
    n.datasets = vec![
        dataset("zdata/imap/students", running),
        dataset("zdata/imap/staff", running),
    ];
    for i in ["students", "staff"] {
        n.instances.insert(
            i.into(),
            InstanceState {
                state: if running {
                    RunState::Running
                } else {
                    RunState::Stopped
                },
                detail: None,
                norun: Some(true),
            },
        );
        if running {
            // a running jail's Postfix answers through jexec; its configuration lives in it
            n.instance_postfix.insert(
                i.into(),
                PostfixObservation {
                    settings: [(
                        "config_directory".to_string(),
                        "/usr/local/etc/postfix".to_string(),
                    )]
                    .into(),
                    queue: Vec::new(),
                    files: BTreeMap::new(),
                },
            );
        }
    }
    n
}

#[test]
fn the_seed_layout_validates_and_its_plan_runs_postfix_inside_each_jail() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/univ.yaml");
    let bytes = std::fs::read(&path).unwrap();
    let spec = spoolkeeper::spec::parse(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let obs = Observation {
        observed_at: "2026-12-01T12:00:00Z".parse().unwrap(),
        nodes: [
            ("imap-a".into(), node(true)),
            ("imap-b".into(), node(false)),
        ]
        .into(),
        archive: None,
    };
    let p = spoolkeeper::plan::plan(
        &spec,
        &obs,
        "2026-12-01T12:00:00Z".parse().unwrap(),
        &Default::default(),
    );
    let text = spoolkeeper::plan::render::text(&p, Some(&spec));
    let postfix_tools = ["postconf", "postfix", "postqueue", "postsuper", "sendmail"];
    let mut jailed = BTreeMap::new();
    for a in p.actions() {
        for argv in spoolkeeper::adapters::dispatch::commands(&spec, a).unwrap() {
            let plain = postfix_tools.contains(&argv[0].as_str());
            assert!(
                !plain,
                "a Postfix command outside the jails: {argv:?}\n{text}"
            );
            if argv[0] == "jexec" {
                *jailed.entry(argv[1].clone()).or_insert(0) += 1;
                assert!(
                    a.mail.is_some(),
                    "{}: jexec without a mail system\n{text}",
                    a.id
                );
            }
        }
    }
    // per jail: the BCC table, postconf -e, postfix reload
    assert_eq!(jailed.get("imap-students"), Some(&3), "{text}");
    assert_eq!(jailed.get("imap-staff"), Some(&3), "{text}");
    assert!(text.contains("$ jexec imap-students postconf -e"), "{text}");
}
