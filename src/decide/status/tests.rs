//! Table tests of the pure `status` and `check`: no host, fixed `now`.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::decide::rpo::CheckState;
use crate::model::{
    ArchiveObservation, Capabilities, Dataset, DatasetKind, InstanceState, NodeObservation,
    Observation, PostfixObservation, QueueEntry, QueueRecipient, Reachability, RunState, Snapshot,
    UnreachableKind,
};
use crate::plan::history::{Phase, Record};
use crate::spec::{self, Spec};

const SPEC: &str = r#"
apiVersion: spoolkeeper/v1
kind: SpoolCluster
metadata: { name: lab }
spec:
  active: node-a
  nodes:
    node-a: { ssh: { host: 10.77.0.11 }, pool: zdata }
    node-b: { ssh: { host: 10.77.0.12 }, pool: zdata }
  instances:
    students:
      dataset: imap/students
      runtime: { kind: ezjail, jail: imap-students }
      domains: [students.lab]
    staff:
      dataset: imap/staff
      runtime: { kind: ezjail, jail: imap-staff }
      domains: [staff.lab, staff2.lab]
  snapshots: { prefix: sk, every: 1m, keep: { hourly: 48 } }
  replication: { every: 1m, rpo: 10m }
  archive:
    ssh: { host: 10.77.0.13 }
    address: "{local}={domain}@archive.lab"
  fenced: [node-b]
"#;

fn spec_from(text: &str) -> Spec {
    spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap()
}

fn lab() -> Spec {
    spec_from(SPEC)
}

fn now() -> Timestamp {
    "2026-11-28T18:00:00Z".parse().unwrap()
}

/// A snapshot created `min` minutes before `now`, txg ordered by creation.
fn snap(name: &str, guid: u64, min: i64) -> Snapshot {
    let creation = now() - jiff::SignedDuration::from_secs(min * 60);
    Snapshot {
        name: name.to_owned(),
        guid,
        creation,
        createtxg: Some(u64::try_from(1_000_000 - min).unwrap()),
        userrefs: 0,
        used: 0,
        written: None,
    }
}

fn dataset(name: &str, snapshots: Vec<Snapshot>, readonly: bool) -> Dataset {
    Dataset {
        name: name.to_owned(),
        kind: DatasetKind::Filesystem,
        creation: None,
        guid: Some(1),
        used: Some(1),
        readonly: Some(readonly),
        mounted: Some(!readonly),
        mountpoint: None,
        createtxg: None,
        receive_resume_token: None,
        user_properties: BTreeMap::new(),
        other_properties: BTreeMap::new(),
        snapshots,
    }
}

fn node(datasets: Vec<Dataset>, running: bool) -> NodeObservation {
    let mut n = NodeObservation::unreachable(UnreachableKind::Other, "");
    n.reachability = Reachability::Reachable;
    n.datasets = datasets;
    for i in ["students", "staff"] {
        n.instances.insert(
            i.to_owned(),
            InstanceState {
                state: if running {
                    RunState::Running
                } else {
                    RunState::Stopped
                },
                detail: None,
                norun: Some(!running),
            },
        );
    }
    n
}

fn held(id: &str, queue: &str, rcpts: &[&str]) -> QueueEntry {
    QueueEntry {
        queue_name: queue.into(),
        queue_id: id.into(),
        arrival_time: now(),
        message_size: 100,
        forced_expire: false,
        sender: "x@example.org".into(),
        recipients: rcpts.iter().map(|a| QueueRecipient::to(a)).collect(),
    }
}

fn archive(queue: Vec<QueueEntry>) -> Option<ArchiveObservation> {
    Some(ArchiveObservation {
        reachability: Reachability::Reachable,
        capabilities: Capabilities::default(),
        postfix: Some(PostfixObservation {
            settings: BTreeMap::new(),
            queue,
            files: BTreeMap::new(),
        }),
        errors: vec![],
    })
}

/// One instance's snapshots: on the active node, and on the passive (`None`: no dataset).
struct World {
    a: Vec<Snapshot>,
    b: Option<Vec<Snapshot>>,
}

/// The lab observed: node-a active and running, node-b passive and stopped.
fn observation(students: World, staff: World, queue: Vec<QueueEntry>) -> Observation {
    let mut a = vec![];
    let mut b = vec![];
    for (name, w) in [("students", students), ("staff", staff)] {
        a.push(dataset(&format!("zdata/imap/{name}"), w.a, false));
        if let Some(bs) = w.b {
            b.push(dataset(&format!("zdata/imap/{name}"), bs, true));
        }
    }
    let mut nodes = BTreeMap::new();
    nodes.insert("node-a".to_owned(), node(a, true));
    nodes.insert("node-b".to_owned(), node(b, false));
    Observation {
        observed_at: now(),
        nodes,
        archive: archive(queue),
    }
}

/// Active snapshots at the given ages (minutes), guids 1.., and a replica holding the
/// snapshots at `replicated` indexes (same guids).
fn world(ages: &[i64], replicated: Option<&[usize]>) -> World {
    let a: Vec<Snapshot> = ages
        .iter()
        .enumerate()
        .map(|(i, m)| snap(&format!("sk_{i}"), 100 + i as u64, *m))
        .collect();
    let b = replicated.map(|idx| idx.iter().map(|i| a[*i].clone()).collect());
    World { a, b }
}

fn fresh() -> World {
    world(&[30, 20, 2], Some(&[0, 1, 2]))
}

#[test]
fn check_table() {
    let s = lab();
    type Case = (&'static str, Observation, CheckState, &'static str);
    let unreachable_b = {
        let mut o = observation(fresh(), fresh(), vec![]);
        o.nodes.insert(
            "node-b".into(),
            NodeObservation::unreachable(UnreachableKind::Timeout, "no answer in 5s"),
        );
        o
    };
    let archive_down = {
        let mut o = observation(fresh(), fresh(), vec![]);
        o.archive = Some(ArchiveObservation {
            reachability: Reachability::Unreachable {
                kind: UnreachableKind::Refused,
                message: "refused".into(),
            },
            capabilities: Capabilities::default(),
            postfix: None,
            errors: vec![],
        });
        o
    };
    let active_missing = {
        let mut o = observation(fresh(), fresh(), vec![]);
        if let Some(n) = o.nodes.get_mut("node-a") {
            n.datasets.retain(|d| d.name != "zdata/imap/staff");
            n.missing_datasets.push("zdata/imap/staff".into());
        }
        o
    };
    let listing_failed = {
        let mut o = observation(fresh(), fresh(), vec![]);
        if let Some(n) = o.nodes.get_mut("node-b") {
            n.datasets.clear();
            n.errors.push("zfs listing: truncated".into());
        }
        o
    };
    let diverged = {
        let mut w = world(&[30, 20, 2], Some(&[0, 1]));
        if let Some(b) = w.b.as_mut() {
            b.push(snap("manual", 999, 5));
        }
        w
    };
    let no_common = World {
        a: world(&[30, 20], None).a,
        b: Some(vec![snap("other", 555, 40)]),
    };
    let cases: Vec<Case> = vec![
        (
            "fresh replicas",
            observation(fresh(), fresh(), vec![]),
            CheckState::Ok,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "staff lags past rpo (base 11m old, newer snapshot not sent)",
            observation(fresh(), world(&[30, 11, 1], Some(&[0, 1])), vec![]),
            CheckState::Warning,
            "staff_rpo_age=660s;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "students past twice the rpo",
            observation(world(&[30, 21, 1], Some(&[1, 0])), fresh(), vec![]),
            CheckState::Critical,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=1260s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "exactly the rpo is still OK",
            observation(world(&[10], Some(&[0])), fresh(), vec![]),
            CheckState::Ok,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=600s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "node-b unreachable",
            unreachable_b,
            CheckState::Critical,
            "staff_rpo_age=U;600;1200;0; students_rpo_age=U;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "never replicated, first snapshot 5m old: WARNING",
            observation(world(&[5, 1], None), fresh(), vec![]),
            CheckState::Warning,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=300s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "never replicated past the rpo: CRITICAL",
            observation(world(&[11, 1], None), fresh(), vec![]),
            CheckState::Critical,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=660s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "replica exists without snapshots: never replicated",
            observation(world(&[3], Some(&[])), fresh(), vec![]),
            CheckState::Warning,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=180s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "diverged replica: blocked, CRITICAL though young",
            observation(fresh(), diverged, vec![]),
            CheckState::Critical,
            "staff_rpo_age=1200s;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "no common snapshot with data: blocked",
            observation(fresh(), no_common, vec![]),
            CheckState::Critical,
            "staff_rpo_age=U;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "active dataset missing",
            active_missing,
            CheckState::Critical,
            "staff_rpo_age=U;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "active without snapshots: UNKNOWN",
            observation(world(&[], Some(&[])), fresh(), vec![]),
            CheckState::Unknown,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=U;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "passive listing failed: UNKNOWN",
            listing_failed,
            CheckState::Unknown,
            "staff_rpo_age=U;600;1200;0; students_rpo_age=U;600;1200;0; \
             archive_held=0;;;0;",
        ),
        (
            "archive unreachable: WARNING",
            archive_down,
            CheckState::Warning,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=120s;600;1200;0; \
             archive_held=U;;;0;",
        ),
        (
            "replicated snapshot in the future: UNKNOWN",
            observation(world(&[-3], Some(&[0])), fresh(), vec![]),
            CheckState::Unknown,
            "staff_rpo_age=120s;600;1200;0; students_rpo_age=U;600;1200;0; \
             archive_held=0;;;0;",
        ),
    ];
    for (why, o, state, perf) in cases {
        let r = check(&s, &o, now());
        assert_eq!(
            (r.state, r.perfdata.as_str()),
            (state, perf),
            "{why}: {}",
            r.summary
        );
        assert!(!r.line().contains('\n'), "{why}: one line");
    }
}

#[test]
fn check_summaries_say_why() {
    let s = lab();
    let mut o = observation(fresh(), fresh(), vec![]);
    o.nodes.insert(
        "node-b".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "no answer"),
    );
    let r = check(&s, &o, now());
    assert!(
        r.summary.starts_with("node-b unreachable (timeout); "),
        "{}",
        r.summary
    );
    assert_eq!(r.state.exit_code(), 2);

    let o = observation(world(&[11, 1], None), fresh(), vec![]);
    let r = check(&s, &o, now());
    assert!(
        r.summary
            .contains("students on node-b: never replicated; the first snapshot sk_0 is 11m old"),
        "{}",
        r.summary
    );

    let mut d = world(&[30, 20, 2], Some(&[0, 1]));
    if let Some(b) = d.b.as_mut() {
        b.push(snap("manual", 999, 5));
    }
    let r = check(&s, &observation(fresh(), d, vec![]), now());
    assert!(
        r.summary
            .contains("staff on node-b: replication blocked (diverged)"),
        "{}",
        r.summary
    );
    assert!(r.summary.contains("manual"), "{}", r.summary);

    let r = check(&s, &observation(fresh(), fresh(), vec![]), now());
    assert!(
        r.line()
            .starts_with("RPO OK - staff on node-b: newest replicated snapshot is 2m"),
        "{}",
        r.line()
    );
}

#[test]
fn check_node_missing_from_observation_is_critical() {
    let s = lab();
    let mut o = observation(fresh(), fresh(), vec![]);
    o.nodes.remove("node-b");
    let r = check(&s, &o, now());
    assert_eq!(r.state, CheckState::Critical);
    assert!(
        r.summary.starts_with("node-b not observed"),
        "{}",
        r.summary
    );
}

#[test]
fn several_passives_get_their_own_labels() {
    let text = SPEC.replace(
        "    node-b: { ssh: { host: 10.77.0.12 }, pool: zdata }\n",
        "    node-b: { ssh: { host: 10.77.0.12 }, pool: zdata }\n    node-c: { ssh: { host: 10.77.0.14 }, pool: tank }\n",
    );
    let s = spec_from(&text);
    let mut o = observation(fresh(), fresh(), vec![]);
    // node-c has the students replica 15m behind, no staff dataset.
    let mut c = node(
        vec![dataset(
            "tank/imap/students",
            vec![fresh().a[0].clone()],
            true,
        )],
        false,
    );
    c.missing_datasets.push("tank/imap/staff".into());
    o.nodes.insert("node-c".into(), c);
    let r = check(&s, &o, now());
    assert_eq!(r.state, CheckState::Critical, "{}", r.summary);
    assert_eq!(
        r.perfdata,
        "staff_node-b_rpo_age=120s;600;1200;0; staff_node-c_rpo_age=1800s;600;1200;0; \
         students_node-b_rpo_age=120s;600;1200;0; students_node-c_rpo_age=1800s;600;1200;0; \
         archive_held=0;;;0;"
    );
}

#[test]
fn archive_counts_by_domain() {
    let s = lab();
    let queue = vec![
        held("A1", "hold", &["alice=students.lab@archive.lab"]),
        held("A2", "hold", &["bob=Staff.Lab@ARCHIVE.lab"]),
        held("A3", "hold", &["carol=staff2.lab@archive.lab"]),
        // One message for both instances counts once for each.
        held(
            "A4",
            "hold",
            &["dan=students.lab@archive.lab", "eve=staff.lab@archive.lab"],
        ),
        // A local part holding the separator and a domain-looking tail.
        held("A5", "hold", &["x=students.lab=staff.lab@archive.lab"]),
        // Not an instance domain, not an archive address.
        held("A6", "hold", &["zed=other.lab@archive.lab"]),
        held("A7", "hold", &["postmaster@archive.lab"]),
        // Not held: not counted at all.
        held("A8", "deferred", &["fay=students.lab@archive.lab"]),
    ];
    let o = observation(fresh(), fresh(), queue);
    let st = status(&s, &o, &[], now());
    let by: BTreeMap<&str, Option<usize>> = st
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.archive_held))
        .collect();
    assert_eq!(by["students"], Some(2));
    assert_eq!(by["staff"], Some(4));
    let a = st.archive.as_ref().unwrap();
    assert_eq!((a.held, a.held_unmatched), (Some(7), Some(2)));
    assert!(st.check.perfdata.ends_with("archive_held=7;;;0;"));

    // Unreachable archive: counts unknown, not zero.
    let mut o = observation(fresh(), fresh(), vec![]);
    if let Some(a) = o.archive.as_mut() {
        a.reachability = Reachability::Unreachable {
            kind: UnreachableKind::Timeout,
            message: "t".into(),
        };
        a.postfix = None;
    }
    let st = status(&s, &o, &[], now());
    assert!(st.instances.iter().all(|i| i.archive_held.is_none()));
    assert_eq!(st.archive.as_ref().unwrap().held, None);
}

fn rec(at_min: i64, run: &str, action: &str, phase: Phase, detail: Option<&str>) -> Record {
    Record {
        at: now() - jiff::SignedDuration::from_secs(at_min * 60),
        run: run.to_owned(),
        action: action.to_owned(),
        phase,
        detail: detail.map(str::to_owned),
        done: None,
    }
}

#[test]
fn last_apply_table() {
    use Phase::*;
    let old_run_failed = vec![
        rec(60, "r1", "a", Start, None),
        rec(59, "r1", "a", Failed, Some("boom")),
    ];
    let mut ok = old_run_failed.clone();
    ok.extend([
        rec(10, "r2", "a", Start, None),
        rec(9, "r2", "a", Done, None),
        rec(9, "r2", "b", Start, None),
        rec(8, "r2", "b", Done, None),
    ]);
    let mut failed = ok.clone();
    failed.extend([
        rec(5, "r3", "a", Start, None),
        rec(4, "r3", "a", Failed, Some("zfs: dataset is busy")),
        rec(4, "r3", "b", Skipped, Some("upstream failed: a")),
    ]);
    let mut interrupted = ok.clone();
    interrupted.extend([
        rec(3, "r4", "a", Start, None),
        rec(2, "r4", "a", Done, None),
        rec(2, "r4", "b", Start, None),
    ]);
    // (why, records, expected (outcome, done, failed, skipped, minutes ago))
    type Expect = Option<(ApplyOutcome, usize, usize, usize, i64)>;
    let cases: Vec<(&str, Vec<Record>, Expect)> = vec![
        ("empty journal", vec![], None),
        (
            "newest run ok",
            ok,
            Some((ApplyOutcome::Succeeded, 2, 0, 0, 8)),
        ),
        (
            "newest run failed",
            failed.clone(),
            Some((ApplyOutcome::Failed, 0, 1, 1, 4)),
        ),
        (
            "interrupted",
            interrupted,
            Some((ApplyOutcome::Incomplete, 1, 0, 0, 2)),
        ),
    ];
    for (why, records, expect) in cases {
        let got = last_apply(&records).map(|l| {
            (
                l.outcome,
                l.done,
                l.failed,
                l.skipped,
                now().duration_since(l.at).as_secs() / 60,
            )
        });
        assert_eq!(got, expect, "{why}");
    }
    let l = last_apply(&failed).unwrap();
    assert_eq!(l.run, "r3");
    assert_eq!(l.first_failure.as_deref(), Some("a: zfs: dataset is busy"));
}

#[test]
fn status_shows_nodes_instances_and_replicas() {
    let s = lab();
    let o = observation(
        world(&[30, 20, 2], Some(&[0, 1])),
        world(&[], None),
        vec![held("A1", "hold", &["alice=students.lab@archive.lab"])],
    );
    let journal = vec![
        rec(7, "r9", "node-a:snapshot:students", Phase::Start, None),
        rec(6, "r9", "node-a:snapshot:students", Phase::Done, None),
    ];
    let st = status(&s, &o, &journal, now());
    assert_eq!(st.active, "node-a");
    assert_eq!(st.rpo_seconds, 600);
    let roles: Vec<(&str, Role, bool)> = st
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.role, n.fenced))
        .collect();
    assert_eq!(
        roles,
        [
            ("node-a", Role::Active, false),
            ("node-b", Role::Passive, true)
        ]
    );
    let students = st.instances.iter().find(|i| i.name == "students").unwrap();
    let on_a = &students.nodes[0];
    assert_eq!(
        (
            on_a.node.as_str(),
            on_a.presence,
            on_a.readonly,
            on_a.snapshots,
            on_a.newest_snapshot.as_ref().map(|x| x.name.as_str()),
            on_a.jail.as_ref().map(|j| j.state)
        ),
        (
            "node-a",
            DatasetPresence::Present,
            Some(false),
            3,
            Some("sk_2"),
            Some(RunState::Running)
        )
    );
    let on_b = &students.nodes[1];
    assert_eq!(
        (
            on_b.readonly,
            on_b.snapshots,
            on_b.newest_snapshot.as_ref().map(|x| x.name.as_str())
        ),
        (Some(true), 2, Some("sk_1"))
    );
    let r = &students.replicas[0];
    assert_eq!(
        (
            r.from.as_str(),
            r.to.as_str(),
            r.newest_replicated.as_ref().map(|x| x.name.as_str()),
            r.age_seconds,
            r.state
        ),
        (
            "node-a",
            "node-b",
            Some("sk_1"),
            Some(1200),
            CheckState::Warning
        )
    );
    assert_eq!(students.archive_held, Some(1));
    let staff = st.instances.iter().find(|i| i.name == "staff").unwrap();
    assert_eq!(staff.nodes[1].presence, DatasetPresence::Missing);
    assert_eq!(staff.replicas[0].state, CheckState::Unknown);
    let la = st.last_apply.as_ref().unwrap();
    assert_eq!((la.outcome, la.done), (ApplyOutcome::Succeeded, 1));
    // The overall verdict is check's.
    assert_eq!(st.check, check(&s, &o, now()));

    let t = text(&st);
    for want in [
        "cluster lab  active node-a  rpo 10m",
        "node-b  passive, fenced  yes",
        "students  node-a  active   running  zdata/imap/students",
        "sk_2 (2m ago)",
        "zdata/imap/staff (missing)",
        "students  node-a -> node-b  sk_1",
        "20m",
        "archive: 1 message(s) on hold (0 not matching any instance)",
        "last apply: 2026-11-28T17:54:00Z (6m ago), succeeded: 1 done",
        "RPO WARNING - ",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
}

#[test]
fn status_json_is_stable() {
    let s = lab();
    let mut o = observation(fresh(), fresh(), vec![]);
    o.nodes.insert(
        "node-b".into(),
        NodeObservation::unreachable(UnreachableKind::HostKey, "host key mismatch"),
    );
    let st = status(&s, &o, &[], now());
    let v = serde_json::to_value(&st).unwrap();
    assert_eq!(v["cluster"], "lab");
    assert_eq!(v["nodes"][1]["role"], "passive");
    assert_eq!(v["nodes"][1]["reachability"]["status"], "unreachable");
    assert_eq!(v["nodes"][1]["reachability"]["kind"], "host_key");
    assert_eq!(v["instances"][0]["name"], "staff");
    assert_eq!(v["instances"][0]["nodes"][1]["presence"], "unknown");
    assert_eq!(
        v["instances"][0]["nodes"][1]["jail"],
        serde_json::Value::Null
    );
    assert_eq!(v["instances"][0]["replicas"][0]["state"], "UNKNOWN");
    assert_eq!(
        v["instances"][0]["replicas"][0]["age_seconds"],
        serde_json::Value::Null
    );
    assert_eq!(v["check"]["state"], "CRITICAL");
    assert_eq!(v["last_apply"], serde_json::Value::Null);
    let t = text(&st);
    assert!(
        t.contains("NO (host key rejected): host key mismatch"),
        "{t}"
    );
    assert!(
        t.contains("RPO CRITICAL - node-b unreachable (host key rejected)"),
        "{t}"
    );
}

#[test]
fn mail_at_risk_is_what_arrived_since_the_least_advanced_replica() {
    // students: replica holds the snapshot 20 minutes old (sk_1), not the 2-minute one
    let students = world(&[30, 20, 2], Some(&[0, 1]));
    let at = |min: i64, id: &str, size: u64| QueueEntry {
        arrival_time: now() - jiff::SignedDuration::from_secs(min * 60),
        message_size: size,
        ..held(id, "hold", &["alice=students.lab@archive.lab"])
    };
    let margin = lab().spec.archive.unwrap().margin.as_signed();
    assert!(margin < jiff::SignedDuration::from_secs(20 * 60));
    let queue = vec![
        at(20 + 20, "OLD", 1_000), // before the replicated snapshot: in the replica
        at(10, "NEW1", 300),       // after it: only the archive has it
        at(1, "NEW2", 200),        // after it, and after the newest snapshot too
        QueueEntry {
            // within the margin before it: counted (a clock offset could hide it)
            arrival_time: snap("x", 0, 20).creation - margin / 2,
            ..at(0, "EDGE", 7)
        },
    ];
    let st = status(&lab(), &observation(students, fresh(), queue), &[], now());
    let risk = st.instances.iter().find(|i| i.name == "students").unwrap();
    let r = risk.mail_at_risk.unwrap();
    assert_eq!((r.messages, r.bytes), (3, 507), "{r:?}");
    assert_eq!(r.since, Some(snap("x", 0, 20).creation));
    // staff: nothing held for it
    let staff = st.instances.iter().find(|i| i.name == "staff").unwrap();
    assert_eq!(staff.mail_at_risk.map(|r| r.messages), Some(0));
    // a replica that holds nothing: every held copy is at risk
    let st = status(
        &lab(),
        &observation(world(&[30], None), fresh(), vec![at(40, "OLD", 1_000)]),
        &[],
        now(),
    );
    let r = st.instances[1].mail_at_risk.unwrap();
    assert_eq!(
        (r.messages, r.since),
        (1, None),
        "{:?}",
        st.instances[1].name
    );
}
