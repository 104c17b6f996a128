//! Planner tables and properties. Data in, decision out: no host, no clock.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::model::{
    Capabilities, Dataset, DatasetKind, InstanceState, NodeObservation, Observation, Reachability,
    RunState, UnreachableKind,
};
use crate::spec::{self, Spec};

const SPEC: &str = r#"apiVersion: spoolkeeper/v1
kind: SpoolCluster
metadata: { name: t }
spec:
  active: node-a
  nodes:
    node-a: { ssh: { host: a }, pool: zdata }
    node-b: { ssh: { host: b }, pool: zdata }
    node-c: { ssh: { host: c }, pool: tank }
  instances:
    students:
      dataset: imap/students
      runtime: { kind: ezjail, jail: imap-students }
      properties: { compression: lz4, quota: 80T }
      domains: [students.lab]
    staff:
      dataset: imap/staff
      runtime: { kind: ezjail, jail: imap-staff }
      domains: [staff.lab]
  snapshots: { prefix: sk, every: 1h, keep: { hourly: 24 } }
  replication: { every: 1h, rpo: 24h }
"#;

fn spec_with(active: &str, fenced: &[&str]) -> Spec {
    let mut text = SPEC.replace("active: node-a", &format!("active: {active}"));
    if !fenced.is_empty() {
        text.push_str(&format!("  fenced: [{}]\n", fenced.join(", ")));
    }
    spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap()
}

fn now() -> Timestamp {
    "2026-11-28T12:00:00Z".parse().unwrap()
}

fn reachable() -> NodeObservation {
    let mut n = NodeObservation::unreachable(UnreachableKind::Other, "");
    n.reachability = Reachability::Reachable;
    n.capabilities = Capabilities::default();
    n
}

fn dataset(name: &str, readonly: bool, mounted: bool, props: &[(&str, &str)]) -> Dataset {
    Dataset {
        name: name.into(),
        kind: DatasetKind::Filesystem,
        creation: None,
        guid: Some(1),
        used: Some(1),
        readonly: Some(readonly),
        mounted: Some(mounted),
        mountpoint: Some(format!("/{name}")),
        createtxg: None,
        receive_resume_token: None,
        user_properties: BTreeMap::new(),
        other_properties: props
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        snapshots: Vec::new(),
    }
}

fn state(s: RunState) -> InstanceState {
    InstanceState {
        state: s,
        detail: None,
        norun: None,
    }
}

fn obs(nodes: Vec<(&str, NodeObservation)>) -> Observation {
    Observation {
        observed_at: now(),
        nodes: nodes.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        archive: None,
    }
}

const BASE: &str = "sk_20261128T115000Z";

fn base_snapshot() -> crate::model::Snapshot {
    crate::model::Snapshot {
        name: BASE.into(),
        guid: 4242,
        creation: "2026-11-28T11:50:00Z".parse().unwrap(),
        createtxg: Some(10),
        userrefs: 1,
        used: 0,
        written: None,
    }
}

fn with_base(mut d: Dataset) -> Dataset {
    d.snapshots.push(base_snapshot());
    d
}

/// The holds a converged cluster's journal knows about.
fn converged_ctx() -> Context {
    let mut c = Context::default();
    for (node, pool) in [("node-a", "zdata"), ("node-b", "zdata"), ("node-c", "tank")] {
        for ds in ["imap/students", "imap/staff"] {
            c.held
                .insert(Context::hold_key(node, &format!("{pool}/{ds}"), BASE));
        }
    }
    c
}

/// A converged three-node cluster with node-a active.
fn converged() -> Observation {
    let mut a = reachable();
    a.datasets = vec![
        with_base(dataset(
            "zdata/imap/students",
            false,
            true,
            &[("compression", "lz4"), ("quota", "87960930222080")],
        )),
        with_base(dataset("zdata/imap/staff", false, true, &[])),
    ];
    a.instances
        .insert("students".into(), state(RunState::Running));
    a.instances.insert("staff".into(), state(RunState::Running));
    let mut b = reachable();
    b.datasets = vec![
        with_base(dataset("zdata/imap/students", true, false, &[])),
        with_base(dataset("zdata/imap/staff", true, false, &[])),
    ];
    b.instances
        .insert("students".into(), state(RunState::Stopped));
    b.instances.insert("staff".into(), state(RunState::Stopped));
    let mut c = reachable();
    c.datasets = vec![
        with_base(dataset("tank/imap/students", true, false, &[])),
        with_base(dataset("tank/imap/staff", true, false, &[])),
    ];
    c.instances
        .insert("students".into(), state(RunState::Stopped));
    c.instances.insert("staff".into(), state(RunState::Stopped));
    obs(vec![("node-a", a), ("node-b", b), ("node-c", c)])
}

/// A deferred queue entry for one recipient, accepted now.
fn deferred(id: &str, rcpt: &str) -> crate::model::QueueEntry {
    crate::model::QueueEntry {
        queue_name: "deferred".into(),
        queue_id: id.into(),
        arrival_time: now(),
        message_size: 1,
        forced_expire: false,
        sender: "s@x.org".into(),
        recipients: [crate::model::QueueRecipient::to(rcpt)].into(),
    }
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions().iter().map(|a| a.id.clone()).collect()
}

#[test]
fn a_converged_cluster_plans_nothing() {
    let p = plan(
        &spec_with("node-a", &[]),
        &converged(),
        now(),
        &converged_ctx(),
    );
    assert!(p.is_empty(), "{}", render::text(&p, None));
    assert!(render::text(&p, None).contains("No changes"));
}

#[test]
fn a_fresh_active_gets_datasets_then_the_instances() {
    let mut o = converged();
    let a = o.nodes.get_mut("node-a").unwrap();
    a.datasets.clear();
    a.missing_datasets = vec!["zdata/imap/students".into(), "zdata/imap/staff".into()];
    a.instances
        .insert("students".into(), state(RunState::Stopped));
    a.instances.insert("staff".into(), state(RunState::Stopped));
    o.nodes.get_mut("node-b").unwrap().datasets.clear();
    o.nodes.get_mut("node-c").unwrap().datasets.clear();
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    let ids = kinds(&p);
    let instance_steps: Vec<&String> = ids
        .iter()
        .filter(|k| k.contains("create_dataset") || k.contains("start_instance"))
        .collect();
    assert_eq!(
        instance_steps,
        vec![
            "node-a:create_dataset:zdata/imap/staff",
            "node-a:start_instance:staff",
            "node-a:create_dataset:zdata/imap/students",
            "node-a:start_instance:students",
        ]
    );
    // The new datasets are snapshotted and sent in full to the replicas, after creation.
    let pos = |k: &str| ids.iter().position(|i| i == k).unwrap();
    let snap = ids
        .iter()
        .find(|k| k.starts_with("node-a:snapshot:zdata/imap/students"))
        .unwrap();
    assert!(pos("node-a:create_dataset:zdata/imap/students") < pos(snap));
    assert!(pos(snap) < pos("node-a:replicate:zdata/imap/students->node-b"));
    let create = p
        .actions()
        .into_iter()
        .find(|a| a.id == "node-a:create_dataset:zdata/imap/students")
        .unwrap()
        .clone();
    assert_eq!(
        create.kind,
        ActionKind::CreateDataset {
            dataset: "zdata/imap/students".into(),
            properties: [("compression", "lz4"), ("quota", "80T")]
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        }
    );
}

#[test]
fn drifted_properties_are_set_and_sizes_compare_by_value() {
    let mut o = converged();
    let d = &mut o.nodes.get_mut("node-a").unwrap().datasets[0];
    d.other_properties
        .insert("compression".into(), "off".into());
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert_eq!(kinds(&p), vec!["node-a:set_properties:zdata/imap/students"]);
    assert!(p.actions()[0].reason.contains("compression is off"));
}

#[test]
fn a_running_passive_is_stopped_before_anything_is_made_writable() {
    let mut o = converged();
    let a = o.nodes.get_mut("node-a").unwrap();
    a.instances.insert("staff".into(), state(RunState::Stopped));
    a.datasets[1].readonly = Some(true);
    let b = o.nodes.get_mut("node-b").unwrap();
    b.instances.insert("staff".into(), state(RunState::Running));
    b.datasets[1].readonly = Some(false);
    b.datasets[1].mounted = Some(true);
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    let ids = kinds(&p);
    let pos = |k: &str| ids.iter().position(|i| i == k).unwrap();
    assert!(pos("node-b:stop_instance:staff") < pos("node-a:set_readonly:zdata/imap/staff"));
    assert!(pos("node-b:stop_instance:staff") < pos("node-a:start_instance:staff"));
    assert!(pos("node-b:stop_instance:staff") < pos("node-b:unmount:zdata/imap/staff"));
    // A switchover: the old copy's queue is drained before its final snapshot; it is
    // read-only before the send and unmounted after it.
    assert!(pos("node-b:wait_delivered:staff") < pos("node-b:snapshot:zdata/imap/staff"));
    assert!(pos("node-b:snapshot:zdata/imap/staff") < pos("node-b:set_readonly:zdata/imap/staff"));
    assert!(pos("node-b:set_readonly:zdata/imap/staff") < pos("node-b:unmount:zdata/imap/staff"));
}

#[test]
fn an_unreachable_unfenced_node_blocks_a_start_but_not_a_running_cluster() {
    let mut o = converged();
    o.nodes.insert(
        "node-b".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "no answer in 5s"),
    );
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, None));
    assert!(p.notes.iter().any(|n| n.contains("node-b is unreachable")));

    o.nodes
        .get_mut("node-a")
        .unwrap()
        .instances
        .insert("staff".into(), state(RunState::Stopped));
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert!(p.blocked.iter().any(|b| matches!(b, Blocked::OtherNodeNotFenced { node, instance, .. } if node == "node-b" && instance == "staff")));
    assert!(!kinds(&p).iter().any(|k| k.contains("start_instance:staff")));

    // Fenced by the operator: the start goes ahead.
    let p = plan(
        &spec_with("node-a", &["node-b"]),
        &o,
        now(),
        &converged_ctx(),
    );
    assert!(!p.is_blocked(), "{}", render::text(&p, None));
    assert!(kinds(&p).contains(&"node-a:start_instance:staff".to_string()));
    // Fenced by a fencing command that succeeded: same.
    let ctx = Context {
        fenced_by_command: ["node-b".to_string()].into_iter().collect(),
        ..converged_ctx()
    };
    let p = plan(&spec_with("node-a", &[]), &o, now(), &ctx);
    assert!(!p.is_blocked());
}

#[test]
fn an_unreachable_active_blocks_everything() {
    let mut o = converged();
    o.nodes.insert(
        "node-a".into(),
        NodeObservation::unreachable(UnreachableKind::Refused, "connection refused"),
    );
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert!(matches!(p.blocked[..], [Blocked::ActiveUnreachable { .. }]));
    assert_eq!(p.graph.node_count(), 0);
}

#[test]
fn mail_on_another_node_is_never_replaced_by_an_empty_dataset() {
    let mut o = converged();
    // The spec says node-c is active; node-c has no dataset, node-a and node-b have the mail.
    o.nodes.get_mut("node-c").unwrap().datasets.clear();
    o.nodes.get_mut("node-a").unwrap().instances.clear();
    let p = plan(&spec_with("node-c", &[]), &o, now(), &converged_ctx());
    assert!(
        p.blocked.iter().any(
            |b| matches!(b, Blocked::DataOnOtherNode { instance, .. } if instance == "students")
        )
    );
    assert!(!kinds(&p).iter().any(|k| k.contains("create_dataset")));
}

#[test]
fn unknown_instance_state_blocks() {
    let mut o = converged();
    o.nodes.get_mut("node-b").unwrap().instances.insert(
        "staff".into(),
        InstanceState {
            state: RunState::Unknown,
            detail: Some("jls failed".into()),
            norun: None,
        },
    );
    o.nodes
        .get_mut("node-a")
        .unwrap()
        .instances
        .insert("staff".into(), state(RunState::Stopped));
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert!(
        p.blocked
            .iter()
            .any(|b| matches!(b, Blocked::InstanceStateUnknown { node, .. } if node == "node-b"))
    );
    assert!(!kinds(&p).iter().any(|k| k.contains("start_instance:staff")));
}

#[test]
fn the_four_renderers_show_the_same_steps() {
    let mut o = converged();
    o.nodes
        .get_mut("node-a")
        .unwrap()
        .instances
        .insert("staff".into(), state(RunState::Stopped));
    o.nodes.get_mut("node-b").unwrap().datasets[0].mounted = Some(true);
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    let ids = kinds(&p);
    assert_eq!(ids.len(), 2);
    let json: serde_json::Value = serde_json::from_str(&render::json(&p, None)).unwrap();
    let json_ids: Vec<&str> = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(json_ids, ids);
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["fingerprint"], p.fingerprint);
    let (text, md, dot) = (
        render::text(&p, None),
        render::markdown(&p, None),
        render::dot(&p, None),
    );
    for a in p.actions() {
        let s = a.kind.summary();
        assert!(
            text.contains(&s) && md.contains(&s) && dot.contains(&s),
            "{s}"
        );
    }
    // JSON round trip for `--out` / `--plan` (as written with the spec).
    let s = spec_with("node-a", &[]);
    let saved: SavedPlan = serde_json::from_str(&render::json(&p, Some(&s))).unwrap();
    let back = render::from_saved(&saved, &s).unwrap();
    assert_eq!(kinds(&back), ids);
}

#[test]
fn a_saved_plan_runs_only_as_written_for_its_spec() {
    // a failover plan saved while node-a is attested fenced
    let fenced = spec_with("node-b", &["node-a", "node-c"]);
    let p = plan(&fenced, &lost_active(false), now(), &converged_ctx());
    assert!(
        !p.is_blocked() && !p.is_empty(),
        "{}",
        render::text(&p, Some(&fenced))
    );
    let text = render::json(&p, Some(&fenced));
    let read = |t: &str| -> SavedPlan { serde_json::from_str(t).unwrap() };
    assert!(render::from_saved(&read(&text), &fenced).is_ok());
    // the attestation removed from the spec: the plan decided under it is refused
    let unfenced = spec_with("node-b", &["node-c"]);
    let e = render::from_saved(&read(&text), &unfenced).unwrap_err();
    assert!(e.contains("the spec changed"), "{e}");
    // an edited file: a command changed by hand
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cmd = v["actions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| !a["commands"].as_array().unwrap().is_empty())
        .unwrap();
    cmd["commands"][0][0] = "rm".into();
    let edited = v.to_string();
    let e = render::from_saved(&read(&edited), &fenced).unwrap_err();
    assert!(e.contains("digest"), "{e}");
    // edited and re-sealed (someone who knows the format): the commands are checked against
    // what the spec builds
    let resealed = read(&edited).sealed();
    let e = render::from_saved(&resealed, &fenced).unwrap_err();
    assert!(e.contains("not the ones this spec builds"), "{e}");
    // an edge removed and re-sealed: the invariants are checked again
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for a in v["actions"].as_array_mut().unwrap() {
        a["depends_on"] = serde_json::json!([]);
    }
    let loose = read(&v.to_string()).sealed();
    let e = render::from_saved(&loose, &fenced).unwrap_err();
    assert!(e.contains("invariants"), "{e}");
}

#[test]
fn fingerprint_ignores_clocks_but_not_the_world() {
    let o = converged();
    let mut later = o.clone();
    later.observed_at = "2026-11-28T13:00:00Z".parse().unwrap();
    later
        .nodes
        .get_mut("node-a")
        .unwrap()
        .capabilities
        .clock_offset_ms = Some(12);
    assert_eq!(fingerprint(&o), fingerprint(&later));
    later.nodes.get_mut("node-b").unwrap().datasets[0].readonly = Some(false);
    assert_ne!(fingerprint(&o), fingerprint(&later));
}

#[test]
fn digests_hash_the_same_json_as_a_serialised_copy_would() {
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| -> String {
        Sha256::digest(b)
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut o = converged();
    o.nodes
        .get_mut("node-a")
        .unwrap()
        .capabilities
        .clock_offset_ms = Some(7);
    o.archive = Some(crate::model::ArchiveObservation {
        reachability: Reachability::Reachable,
        capabilities: Capabilities {
            clock_offset_ms: Some(3),
            clock_uncertainty_ms: Some(4),
            ..Default::default()
        },
        postfix: Some(crate::model::PostfixObservation {
            settings: [("relay_domains".to_string(), "archive.lab".to_string())].into(),
            queue: crate::adapters::postfix::parse_postqueue(
                r#"{"queue_name":"hold","queue_id":"4Fq1","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"u=s.lab@archive.lab"}]}"#,
            )
            .unwrap(),
            files: BTreeMap::new(),
        }),
        errors: vec!["x".into()],
    });
    // the definition: the JSON of a copy with the clocks cleared
    let mut c = o.clone();
    c.observed_at = Timestamp::UNIX_EPOCH;
    for n in c.nodes.values_mut() {
        n.capabilities.clock_offset_ms = None;
        n.capabilities.clock_uncertainty_ms = None;
    }
    let a = c.archive.as_mut().unwrap();
    a.capabilities.clock_offset_ms = None;
    a.capabilities.clock_uncertainty_ms = None;
    assert_eq!(fingerprint(&o), hex(&serde_json::to_vec(&c).unwrap()));
    let s = spec_with("node-a", &[]);
    let mut o2 = converged();
    o2.nodes
        .get_mut("node-a")
        .unwrap()
        .instances
        .insert("students".into(), state(RunState::Stopped));
    let saved = render::to_saved(&plan(&s, &o2, now(), &converged_ctx()), Some(&s)).sealed();
    assert!(!saved.actions.is_empty());
    let mut d = saved.clone();
    d.digest.clear();
    assert_eq!(saved.digest, hex(&serde_json::to_vec(&d).unwrap()));
}

// ---- properties ----------------------------------------------------------------------

fn arb_state() -> impl Strategy<Value = Option<RunState>> {
    prop_oneof![
        Just(None),
        Just(Some(RunState::Running)),
        Just(Some(RunState::Stopped)),
        Just(Some(RunState::Unknown)),
    ]
}

fn arb_dataset(name: &'static str) -> impl Strategy<Value = Option<Dataset>> {
    prop::option::of(
        (
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["lz4", "off"]),
            prop::sample::select(vec!["80T", "87960930222080", "1G", "none"]),
        )
            .prop_map(move |(ro, m, c, q)| {
                dataset(name, ro, m, &[("compression", c), ("quota", q)])
            }),
    )
}

fn arb_node(pool: &'static str) -> impl Strategy<Value = NodeObservation> {
    let (s, t): (&'static str, &'static str) = match pool {
        "zdata" => ("zdata/imap/students", "zdata/imap/staff"),
        _ => ("tank/imap/students", "tank/imap/staff"),
    };
    (
        any::<u8>(),
        arb_dataset(s),
        arb_dataset(t),
        arb_state(),
        arb_state(),
    )
        .prop_map(move |(r, d1, d2, s1, s2)| {
            if r % 5 == 0 {
                return NodeObservation::unreachable(UnreachableKind::Timeout, "cut");
            }
            let mut n = reachable();
            for (name, d) in [(s, d1), (t, d2)] {
                match d {
                    Some(d) => n.datasets.push(d),
                    None => n.missing_datasets.push(name.into()),
                }
            }
            for (i, st) in [("students", s1), ("staff", s2)] {
                if let Some(st) = st {
                    n.instances.insert(i.into(), state(st));
                }
            }
            n
        })
}

fn arb_case() -> impl Strategy<Value = (Spec, Observation)> {
    (
        prop::sample::select(vec!["node-a", "node-b", "node-c"]),
        prop::sample::subsequence(vec!["node-a", "node-b", "node-c"], 0..=2),
        arb_node("zdata"),
        arb_node("zdata"),
        arb_node("tank"),
    )
        .prop_map(|(active, fenced, a, b, c)| {
            let fenced: Vec<&str> = fenced.into_iter().filter(|f| *f != active).collect();
            (
                spec_with(active, &fenced),
                obs(vec![("node-a", a), ("node-b", b), ("node-c", c)]),
            )
        })
}

/// Nodes where the instance may be running after the plan: observed running (after the
/// planned effects), or unreachable and not fenced (unknown: assume the worst).
fn possible_runners(spec: &Spec, o: &Observation, inst: &str) -> Vec<String> {
    spec.spec
        .nodes
        .keys()
        .filter(|n| {
            let obs = &o.nodes[n.as_str()];
            if !obs.reachability.is_reachable() {
                return !spec.spec.fenced.contains(n);
            }
            obs.instances
                .get(inst)
                .is_some_and(|s| s.state != RunState::Stopped)
        })
        .map(|n| n.to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Applying the plan's promised effects and planning again leaves nothing to do.
    #[test]
    fn plans_converge((spec, o) in arb_case()) {
        let p = plan(&spec, &o, now(), &converged_ctx());
        prop_assert!(p.order().is_ok());
        // the plan's own invariants hold on every plan (no unordered pair on one object, no
        // promotion before a demotion or a fence)
        prop_assert!(p.check(&spec).is_empty(), "{:?}\n{}", p.check(&spec), render::text(&p, None));
        prop_assert!(
            !p.blocked.iter().any(|b| matches!(b, Blocked::Invariant { .. })),
            "{:?}",
            p.blocked
        );
        if p.is_blocked() {
            return Ok(());
        }
        let mut after = o.clone();
        let mut ctx = converged_ctx();
        for a in p.actions() {
            effect::apply(&mut after, a);
            ctx.learn(a);
        }
        let again = plan(&spec, &after, now(), &ctx);
        prop_assert!(again.graph.node_count() == 0, "not converged:\n{}\nthen:\n{}", render::text(&p, None), render::text(&again, None));
    }

    /// Never two actives, never two writable copies, whatever was observed.
    #[test]
    fn plans_never_make_two_actives((spec, o) in arb_case()) {
        let p = plan(&spec, &o, now(), &converged_ctx());
        let active = spec.spec.active.to_string();
        let order = p.actions();
        for (i, a) in order.iter().enumerate() {
            if let ActionKind::StartInstance { instance } = &a.kind {
                prop_assert_eq!(&a.host, &Target::Node(active.clone()));
                // Everything planned before the start: simulate, then count possible runners.
                let mut before = o.clone();
                for b in &order[..i] {
                    effect::apply(&mut before, b);
                }
                let others: Vec<String> = possible_runners(&spec, &before, instance)
                    .into_iter()
                    .filter(|n| *n != active)
                    .collect();
                prop_assert!(others.is_empty(), "{instance} started on {active} while it may run on {others:?}\n{}", render::text(&p, None));
            }
            if let ActionKind::SetReadonly { readonly: false, dataset } = &a.kind {
                prop_assert_eq!(&a.host, &Target::Node(active.clone()), "{} made writable off the active", dataset);
            }
            prop_assert!(!a.kind.destructive());
        }
    }
}

fn snap(name: &str, guid: u64, at: &str, txg: u64) -> crate::model::Snapshot {
    crate::model::Snapshot {
        name: name.into(),
        guid,
        creation: at.parse().unwrap(),
        createtxg: Some(txg),
        userrefs: 0,
        used: 0,
        written: None,
    }
}

#[test]
fn new_snapshots_are_sent_incrementally_and_the_hold_moves() {
    let mut o = converged();
    let newer = snap("sk_20261128T115900Z", 777, "2026-11-28T11:59:00Z", 11);
    for d in &mut o.nodes.get_mut("node-a").unwrap().datasets {
        d.snapshots.push(newer.clone());
    }
    // The base (11:50) is older than replication.every (1h)? No: 10 min. Make it due.
    let now: Timestamp = "2026-11-28T12:55:00Z".parse().unwrap();
    let p = plan(&spec_with("node-a", &[]), &o, now, &converged_ctx());
    let ids = kinds(&p);
    let repl = p
        .actions()
        .into_iter()
        .find(|a| a.id == "node-a:replicate:zdata/imap/staff->node-b")
        .unwrap()
        .clone();
    match &repl.kind {
        ActionKind::Replicate { base, to, .. } => {
            assert_eq!(base.as_deref(), Some(BASE));
            // No new snapshot is due (the newest is 56 minutes old): the newest one is sent.
            assert_eq!(to, "sk_20261128T115900Z");
        }
        k => panic!("{k:?}"),
    }
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i == k)
            .unwrap_or_else(|| panic!("{k} not in {ids:?}"))
    };
    let new = "sk_20261128T115900Z";
    let hold_b = format!("node-b:hold:zdata/imap/staff@{new}");
    let release_b = format!("node-b:release:zdata/imap/staff@{BASE}");
    assert!(pos(&repl.id) < pos(&hold_b));
    assert!(
        pos(&hold_b) < pos(&release_b),
        "hold the new base before releasing the old"
    );
}

#[test]
fn a_diverged_replica_blocks_and_nothing_is_rolled_back() {
    let mut o = converged();
    let rogue = snap("manual-fix", 999, "2026-11-28T11:55:00Z", 20);
    o.nodes.get_mut("node-b").unwrap().datasets[1]
        .snapshots
        .push(rogue);
    let p = plan(&spec_with("node-a", &[]), &o, now(), &converged_ctx());
    assert!(p.blocked.iter().any(|b| matches!(b,
        Blocked::Replication { node, conflict: crate::decide::replication::Conflict::Diverged { .. }, .. } if node == "node-b")),
        "{}", render::text(&p, None));
    assert!(
        !kinds(&p)
            .iter()
            .any(|k| k.starts_with("node-b:destroy") || k.contains("->node-b"))
    );
}

#[test]
fn retention_prunes_only_owned_snapshots_never_the_base() {
    let mut o = converged();
    let a = o.nodes.get_mut("node-a").unwrap();
    // A year-old owned snapshot, a foreign one, and the base (11:50).
    a.datasets[1]
        .snapshots
        .insert(0, snap("sk_20251101T000000Z", 1, "2025-11-01T00:00:00Z", 1));
    a.datasets[1].snapshots.insert(
        1,
        snap(
            "autosnap_2025-11-01_00:00:00_daily",
            2,
            "2025-11-01T00:00:00Z",
            2,
        ),
    );
    let s = spec_with("node-a", &[]);
    let p = plan(&s, &o, now(), &converged_ctx());
    let destroy: Vec<_> = p
        .actions()
        .into_iter()
        .filter_map(|a| match &a.kind {
            ActionKind::DestroySnapshots { snapshots, .. } => Some(snapshots.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(destroy, vec!["sk_20251101T000000Z".to_string()]);

    // With a passive unreachable, its base is unknown: nothing is pruned on the active.
    o.nodes.insert(
        "node-c".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "cut"),
    );
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(
        !kinds(&p).iter().any(|k| k.starts_with("node-a:destroy")),
        "{}",
        render::text(&p, None)
    );
}

fn spec_fencing(active: &str) -> Spec {
    let mut text = SPEC.replace("active: node-a", &format!("active: {active}"));
    text.push_str("  fencing: { command: [/usr/local/sbin/fence, \"{node}\", \"{host}\"] }\n");
    spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap()
}

/// node-a was active and has one more snapshot than its replicas; the spec now says node-b.
fn before_move() -> Observation {
    let mut o = converged();
    let newer = snap("sk_20261128T115900Z", 777, "2026-11-28T11:59:00Z", 11);
    for d in &mut o.nodes.get_mut("node-a").unwrap().datasets {
        d.snapshots.push(newer.clone());
    }
    o
}

#[test]
fn a_switchover_moves_the_mail_before_the_service() {
    let s = spec_with("node-b", &[]);
    let p = plan(&s, &before_move(), now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("{k} not in {ids:#?}"))
    };
    let steps = [
        "node-a:stop_instance:staff",
        "node-a:wait_delivered:staff",
        "node-a:snapshot:zdata/imap/staff",
        "node-a:set_readonly:zdata/imap/staff",
        "node-a:replicate:zdata/imap/staff->node-b",
        "controller:verify_guid:zdata/imap/staff@",
        "node-a:unmount:zdata/imap/staff",
        "node-b:set_readonly:zdata/imap/staff",
        "node-b:mount:zdata/imap/staff",
        "node-b:start_instance:staff",
    ];
    for w in steps.windows(2) {
        assert!(
            pos(w[0]) < pos(w[1]),
            "{} must come before {}\n{}",
            w[0],
            w[1],
            render::text(&p, Some(&s))
        );
    }
    // The final snapshot is what is sent, incrementally from the newest common snapshot.
    let repl = p
        .actions()
        .into_iter()
        .find(|a| a.id.starts_with("node-a:replicate:zdata/imap/staff"))
        .unwrap()
        .clone();
    match repl.kind {
        ActionKind::Replicate { base, to, .. } => {
            assert_eq!(base.as_deref(), Some(BASE));
            assert_eq!(to, "sk_20261128T120000Z");
        }
        k => panic!("{k:?}"),
    }
    // Nothing replicates back in the same run, nothing is fenced, nothing restored.
    assert!(
        !ids.iter()
            .any(|k| k.contains("->node-a") || k.contains("fence") || k.contains("arch_restore"))
    );
}

#[test]
fn failover_without_fencing_is_blocked_and_with_fencing_is_planned() {
    let mut o = before_move();
    o.nodes.insert(
        "node-a".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "power loss"),
    );
    let s = spec_with("node-b", &[]);
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(
        p.blocked
            .iter()
            .any(|b| matches!(b, Blocked::OtherNodeNotFenced { node, .. } if node == "node-a"))
    );
    assert!(
        !kinds(&p)
            .iter()
            .any(|k| k.contains("start_instance") || k.contains("readonly"))
    );

    // The operator attests node-a is down: promote, restore, record the resync.
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n  fenced: [node-a]\n");
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("{k} not in {ids:#?}"))
    };
    for w in [
        "node-b:set_user_property:zdata/imap/students:spoolkeeper:resync",
        "node-b:set_user_property:zdata/imap/students:spoolkeeper:replay",
        "node-b:set_readonly:zdata/imap/students",
        "node-b:start_instance:students",
        "controller:arch_restore:students",
    ]
    .windows(2)
    {
        assert!(pos(w[0]) < pos(w[1]), "{} before {}", w[0], w[1]);
    }
    let mark = p
        .actions()
        .into_iter()
        .find(|a| {
            a.id.starts_with("node-b:set_user_property:zdata/imap/students")
        })
        .unwrap()
        .clone();
    match &mark.kind {
        ActionKind::SetUserProperty { value: Some(v), .. } => {
            let m = Marks::decode(v);
            assert_eq!(m.nodes.keys().collect::<Vec<_>>(), ["node-a"]);
            assert_eq!(
                m.epoch,
                now().as_second(),
                "the record carries the promotion's time"
            );
        }
        k => panic!("{k:?}"),
    }
    // The replay owed from the replica's newest snapshot, recorded before anything changes
    // (nothing is rolled back: nothing is destroyed), cleared only after the replay.
    assert!(!ids.iter().any(|i| i.contains(":rollback:")), "{ids:?}");
    let restore = p.actions()[pos("controller:arch_restore:students")].clone();
    assert!(
        matches!(&restore.kind, ActionKind::ArchRestore { anchor: Some(a), node: Some(n), .. } if a == BASE && n == "node-b"),
        "{restore:?}"
    );
    assert!(
        pos("controller:arch_restore:students")
            < pos("node-b:set_user_property:zdata/imap/students:spoolkeeper:replay:clear")
    );
    // The snapshot due on the promoted copy comes after the start.
    let snap = ids
        .iter()
        .position(|i| i.starts_with("node-b:snapshot:zdata/imap/students"));
    if let Some(snap) = snap {
        assert!(pos("node-b:start_instance:students") < snap);
    }

    // With a fencing command: the fence runs first, then the same promotion.
    let s = spec_fencing("node-b");
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    let ids = kinds(&p);
    let pos = |k: &str| ids.iter().position(|i| i.starts_with(k)).unwrap();
    assert!(pos("controller:fence:node-a") < pos("node-b:set_readonly:zdata/imap/staff"));
    assert!(pos("controller:fence:node-a") < pos("node-b:start_instance:staff"));
    let cmd = crate::adapters::dispatch::commands(&s, p.actions()[pos("controller:fence:node-a")])
        .unwrap();
    assert_eq!(
        cmd,
        vec![vec![
            "/usr/local/sbin/fence".to_string(),
            "node-a".into(),
            "a".into()
        ]]
    );
}

#[test]
fn a_returning_node_is_preserved_rolled_back_and_resynced() {
    // node-b is active after a failover; node-a comes back with writes of its own.
    let mut o = converged();
    for d in &mut o.nodes.get_mut("node-b").unwrap().datasets {
        d.readonly = Some(false);
        d.mounted = Some(true);
        d.user_properties
            .insert(RESYNC_PROPERTY.into(), "node-a".into());
    }
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .instances
        .insert("students".into(), state(RunState::Running));
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .instances
        .insert("staff".into(), state(RunState::Running));
    let a = o.nodes.get_mut("node-a").unwrap();
    a.instances
        .insert("students".into(), state(RunState::Running)); // came up by itself
    for d in &mut a.datasets {
        d.snapshots
            .push(snap("sk_20261128T115900Z", 777, "2026-11-28T11:59:00Z", 11));
    }
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  fenced: [node-a]\n");
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("{k} not in {ids:#?}"))
    };
    for w in [
        "node-a:stop_instance:students",
        "node-a:preserve_delta:zdata/imap/students",
        "node-a:rollback:zdata/imap/students",
        "node-b:replicate:zdata/imap/students->node-a",
        "node-b:set_user_property:zdata/imap/students:spoolkeeper:resync",
    ]
    .windows(2)
    {
        assert!(
            pos(w[0]) < pos(w[1]),
            "{} before {}\n{}",
            w[0],
            w[1],
            render::text(&p, Some(&s))
        );
    }
    assert!(
        !ids.iter().any(|k| k.starts_with("node-a:start_instance")),
        "the returning node never starts"
    );
    let rb = p
        .actions()
        .into_iter()
        .find(|a| a.id.starts_with("node-a:rollback:zdata/imap/students"))
        .unwrap()
        .clone();
    assert!(
        matches!(&rb.kind, ActionKind::Rollback { snapshot, destroy_later: true, .. } if snapshot == BASE)
    );
    let repl = p
        .actions()
        .into_iter()
        .find(|a| a.id.starts_with("node-b:replicate:zdata/imap/students"))
        .unwrap()
        .clone();
    assert!(
        matches!(&repl.kind, ActionKind::Replicate { base: Some(b), .. } if b == BASE),
        "incremental, no full resend"
    );
}

// ---- sequences: the world moves, the operator edits, the controller applies ----------

#[derive(Debug, Clone)]
enum Event {
    /// The operator makes this node active (the one-line edit).
    Edit(usize),
    /// Power loss: the node is unreachable and its jails are stopped (truth).
    PowerLoss(usize),
    /// Network cut: the node is unreachable but keeps running whatever it ran.
    Cut(usize),
    /// The node is reachable again (booted or healed).
    Return(usize),
    /// The controller runs: plan, apply the effects of an unblocked plan.
    Apply,
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..3).prop_map(Event::Edit),
            (0usize..3).prop_map(Event::PowerLoss),
            (0usize..3).prop_map(Event::Cut),
            (0usize..3).prop_map(Event::Return),
            Just(Event::Apply),
            Just(Event::Apply),
        ],
        1..25,
    )
}

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Runs one sequence of events (see [`no_sequence_makes_two_actives`]).
fn run_sequence(events: Vec<Event>, with_fencing: bool) -> Result<(), TestCaseError> {
    // The truth, including what unreachable nodes do. Every node's Postfix is observed (an
    // empty queue), so a returning node's resync can complete.
    let mut truth = converged();
    for n in truth.nodes.values_mut() {
        n.postfix = Some(Default::default());
    }
    let mut powered = [true, true, true];
    let mut visible = [true, true, true];
    let mut active = 0usize;
    let mut ctx = converged_ctx();
    for ev in events {
        match ev {
            Event::Edit(n) => active = n,
            Event::PowerLoss(n) => {
                powered[n] = false;
                visible[n] = false;
                for s in truth
                    .nodes
                    .get_mut(NODES[n])
                    .unwrap()
                    .instances
                    .values_mut()
                {
                    s.state = RunState::Stopped;
                }
            }
            Event::Cut(n) => visible[n] = false,
            Event::Return(n) => {
                powered[n] = true;
                visible[n] = true;
            }
            Event::Apply => {
                let fenced: Vec<&str> = (0..3)
                    .filter(|i| *i != active && !powered[*i])
                    .map(|i| NODES[i])
                    .collect();
                let s = if with_fencing {
                    spec_fencing(NODES[active])
                } else {
                    spec_with(NODES[active], &fenced)
                };
                let mut seen = truth.clone();
                for (i, n) in NODES.iter().enumerate() {
                    if !visible[i] {
                        seen.nodes.insert(
                            (*n).into(),
                            NodeObservation::unreachable(UnreachableKind::Timeout, "x"),
                        );
                    }
                }
                let p = plan(&s, &seen, now(), &ctx);
                if std::env::var_os("SK_DEBUG_SEQ").is_some() {
                    eprintln!(
                        "--- apply (active {}, visible {visible:?}, powered {powered:?}):\n{}",
                        NODES[active],
                        render::text(&p, None)
                    );
                }
                if p.is_blocked() {
                    continue;
                }
                for a in p.actions() {
                    if let ActionKind::Fence { node } = &a.kind {
                        let i = NODES.iter().position(|n| n == node).unwrap();
                        powered[i] = false;
                        for st in truth
                            .nodes
                            .get_mut(node.as_str())
                            .map(|o| o.instances.values_mut())
                            .into_iter()
                            .flatten()
                        {
                            st.state = RunState::Stopped;
                        }
                    }
                    effect::apply(&mut truth, a);
                    ctx.learn(a);
                    // A returning node may come back with a writable copy (that is the
                    // world, not the plan): check every step that brings something into
                    // service.
                    let affected = match &a.kind {
                        ActionKind::StartInstance { instance } => instance.clone(),
                        ActionKind::SetReadonly {
                            readonly: false,
                            dataset,
                        }
                        | ActionKind::Mount { dataset } => {
                            dataset.rsplit('/').next().unwrap_or_default().to_string()
                        }
                        _ => continue,
                    };
                    {
                        let inst = affected.as_str();
                        let runners: Vec<&str> = NODES
                            .iter()
                            .enumerate()
                            .filter(|(i, n)| {
                                powered[*i]
                                    && truth.nodes[**n]
                                        .instances
                                        .get(inst)
                                        .is_some_and(|s| s.state == RunState::Running)
                            })
                            .map(|(_, n)| *n)
                            .collect();
                        prop_assert!(
                            runners.len() <= 1,
                            "{inst} runs on {runners:?} after {}",
                            a.id
                        );
                        // A copy the controller cannot see (a node powered on behind a
                        // cut after it was fenced) cannot be made read-only by anyone: the
                        // writable check covers the copies it sees; the running check covers
                        // every powered node.
                        let writable: Vec<&str> = NODES
                            .iter()
                            .enumerate()
                            .filter(|(i, n)| {
                                powered[*i]
                                    && visible[*i]
                                    && truth.nodes[**n].datasets.iter().any(|d| {
                                        d.name.ends_with(&format!("/imap/{inst}"))
                                            && d.readonly == Some(false)
                                    })
                            })
                            .map(|(_, n)| *n)
                            .collect();
                        prop_assert!(
                            writable.len() <= 1,
                            "{inst} writable on {writable:?} after {}",
                            a.id
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever happens, no instance ever runs on two powered nodes and no two copies of an
    /// instance are ever writable on powered nodes at once (the operator lists under
    /// `fenced` only nodes that are really powered off; the fencing command powers off).
    #[test]
    fn no_sequence_makes_two_actives(events in arb_events(), with_fencing in any::<bool>()) {
        run_sequence(events, with_fencing)?;
    }
}

#[test]
fn a_fenced_node_that_returns_unseen_and_a_rebooted_active() {
    use Event::*;
    run_sequence(
        vec![
            Cut(0),
            Edit(2),
            PowerLoss(0),
            Apply,
            PowerLoss(2),
            Return(2),
            Return(0),
            Cut(0),
            Apply,
        ],
        true,
    )
    .unwrap();
}

#[test]
fn an_old_fence_does_not_cover_a_new_incident() {
    use Event::*;
    // node-a is cut, fenced, and node-b takes over; node-a comes back, is resynced and made
    // active again; then node-a is cut again and the operator fails over to node-b: the old
    // fence must not count, node-a must be fenced again before node-b serves.
    run_sequence(
        vec![
            Cut(0),
            Edit(1),
            Apply,
            Return(0),
            Apply,
            Apply,
            Apply,
            Edit(0),
            Apply,
            Apply,
            Apply,
            Cut(0),
            Edit(1),
            Apply,
        ],
        true,
    )
    .unwrap();
}

#[test]
fn a_fence_is_forgotten_when_the_node_is_seen_again() {
    let mut ctx = converged_ctx();
    ctx.fenced_by_command.insert("node-b".into());
    let s = spec_fencing("node-a");
    let p = plan(&s, &converged(), now(), &ctx);
    let forget = p
        .actions()
        .into_iter()
        .find(|a| matches!(&a.kind, ActionKind::ForgetFence { node } if node == "node-b"))
        .expect("the old fence is forgotten")
        .clone();
    ctx.learn(&forget);
    assert!(ctx.fenced_by_command.is_empty());
    assert!(plan(&s, &converged(), now(), &ctx).is_empty());
}

/// The failover of the issue: node-a lost, node-b's replica hours old (a snapshot due on it),
/// the instance maybe already started by hand on the read-only replica.
fn lost_active(started_by_hand: bool) -> Observation {
    let mut o = converged();
    o.nodes.insert(
        "node-a".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "power loss"),
    );
    o.nodes.insert(
        "node-c".into(),
        NodeObservation::unreachable(UnreachableKind::Timeout, "power loss"),
    );
    if started_by_hand {
        let b = o.nodes.get_mut("node-b").unwrap();
        b.instances
            .insert("students".into(), state(RunState::Running));
        b.datasets[0].mounted = Some(true);
    }
    o
}

#[test]
fn a_failover_snapshots_the_promoted_copy_only_after_it_serves_and_owes_a_replay() {
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n  fenced: [node-a, node-c]\n");
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    // two hours later: a snapshot is due on node-b's replica
    let later: Timestamp = "2026-11-28T14:00:00Z".parse().unwrap();
    let p = plan(&s, &lost_active(false), later, &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    assert!(p.check(&s).is_empty(), "{:?}", p.check(&s));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("{k} not in {ids:#?}"))
    };
    let snap = pos("node-b:snapshot:zdata/imap/students");
    assert!(pos("node-b:set_readonly:zdata/imap/students") < snap);
    assert!(pos("node-b:start_instance:students") < snap);
    // the snapshot depends on the start (not merely listed after it)
    let start = p.id_of("node-b:start_instance:students").unwrap();
    let snap_id = p
        .graph
        .node_indices()
        .find(|i| {
            p.graph[*i]
                .id
                .starts_with("node-b:snapshot:zdata/imap/students")
        })
        .unwrap();
    assert!(petgraph::algo::has_path_connecting(
        &p.graph, start, snap_id, None
    ));
    // the replay is owed from the replica's newest snapshot, recorded before the promotion
    assert!(
        pos("node-b:set_user_property:zdata/imap/students:spoolkeeper:replay")
            < pos("node-b:set_readonly:zdata/imap/students")
    );
}

#[test]
fn an_instance_started_by_hand_on_the_replica_does_not_skip_fencing() {
    // without a fencing command nor attestation: blocked, nothing made writable
    let s = spec_with("node-b", &[]);
    let p = plan(&s, &lost_active(true), now(), &converged_ctx());
    assert!(
        p.blocked
            .iter()
            .any(|b| matches!(b, Blocked::OtherNodeNotFenced { node, .. } if node == "node-a")),
        "{}",
        render::text(&p, Some(&s))
    );
    assert!(
        !kinds(&p)
            .iter()
            .any(|k| k.contains("set_readonly:zdata/imap/students"))
    );
    // with a fencing command: the fence runs first, and the replay is planned although the
    // instance already runs
    let s = spec_fencing("node-b");
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  fencing: { command: [/usr/local/sbin/fence, \"{node}\", \"{host}\"] }\n");
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s2 = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    for s in [s, s2] {
        let p = plan(&s, &lost_active(true), now(), &converged_ctx());
        assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
        let ids = kinds(&p);
        let pos = |k: &str| ids.iter().position(|i| i.starts_with(k)).unwrap();
        assert!(pos("controller:fence:node-a") < pos("node-b:set_readonly:zdata/imap/students"));
        let fence = p.id_of("controller:fence:node-a").unwrap();
        let rw = p.id_of("node-b:set_readonly:zdata/imap/students").unwrap();
        assert!(petgraph::algo::has_path_connecting(
            &p.graph, fence, rw, None
        ));
        if s.spec.archive.is_some() {
            assert!(ids.iter().any(|i| i == "controller:arch_restore:students"));
        }
    }
}

#[test]
fn instances_never_start_when_the_bcc_table_cannot_be_built() {
    // validation refuses such specs; the planner does not rely on it (a spec built otherwise)
    let mut text = SPEC.to_owned();
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let mut s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let mut o = converged();
    for n in o.nodes.values_mut() {
        n.postfix = Some(crate::model::PostfixObservation {
            settings: BTreeMap::new(),
            queue: Vec::new(),
            files: BTreeMap::new(),
        });
    }
    o.nodes
        .get_mut("node-a")
        .unwrap()
        .instances
        .insert("students".into(), state(RunState::Stopped));
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    assert!(kinds(&p).contains(&"node-a:start_instance:students".to_string()));
    s.spec
        .instances
        .values_mut()
        .next()
        .unwrap()
        .domains
        .push("not a domain\t".into());
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(
        p.blocked
            .iter()
            .any(|b| b.rule() == "archive_bcc_unbuildable"),
        "{}",
        render::text(&p, Some(&s))
    );
}

#[test]
fn deliveries_queued_on_a_promoted_replica_are_replaced_by_a_replay_of_every_held_copy() {
    // node-b still queues a delivery of students from when it served (simulator seeds 377,
    // 627): it must never be delivered into the copy the failover promotes
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  fenced: [node-a, node-c]\n");
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let mut o = lost_active(false);
    o.nodes.get_mut("node-b").unwrap().postfix = Some(crate::model::PostfixObservation {
        settings: BTreeMap::new(),
        queue: vec![
            deferred("Q1", "u1@students.lab"),
            // an archive copy still on its way is not a local delivery: handed over, not dropped
            deferred("Q2", "u1=students.lab@archive.lab"),
        ],
        files: BTreeMap::new(),
    });
    let p = plan(&s, &o, now(), &converged_ctx());
    let text = render::text(&p, Some(&s));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    let drop = p
        .actions()
        .into_iter()
        .find(|a| matches!(&a.kind, ActionKind::DropQueued { instance, .. } if instance == "students"))
        .unwrap_or_else(|| panic!("no drop of the queued delivery in\n{text}"))
        .clone();
    assert!(
        matches!(&drop.kind, ActionKind::DropQueued { queue_ids, .. } if queue_ids == &["Q1".to_string()])
    );
    // recorded first (every held copy), dropped before the copy serves, replayed after
    let owe = p
        .actions()
        .into_iter()
        .find(|a| {
            matches!(&a.kind, ActionKind::SetUserProperty { dataset, property, value: Some(_) }
            if dataset == "zdata/imap/students" && property == REPLAY_PROPERTY)
        })
        .unwrap()
        .clone();
    assert!(
        matches!(&owe.kind, ActionKind::SetUserProperty { value: Some(v), .. } if v == EVERY_HELD_COPY)
    );
    assert!(pos(&owe.id) < pos(&drop.id), "{text}");
    assert!(
        pos(&drop.id) < pos("node-b:start_instance:students"),
        "{text}"
    );
    assert!(
        matches!(
            p.actions()
                .into_iter()
                .find(|a| a.id.starts_with("controller:arch_restore:students"))
                .map(|a| &a.kind),
            Some(ActionKind::ArchRestore { anchor: None, .. })
        ),
        "{text}"
    );
}

#[test]
fn an_owed_replay_waits_for_the_archive_copies_still_queued_on_a_reachable_spool() {
    // simulator seed 1472: copies accepted while the archive host was down wait in a
    // spool's queue; a replay that read the archive before they got there cleared the debt
    // and their originals (in a copy since rolled back) were lost
    let mut text = SPEC.replace("active: node-a", "active: node-b");
    text.push_str("  fenced: [node-a, node-c]\n");
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let observed = |archive_up: bool| {
        let mut o = lost_active(false);
        o.nodes.get_mut("node-b").unwrap().postfix = Some(crate::model::PostfixObservation {
            settings: BTreeMap::new(),
            queue: vec![
                deferred("Q2", "u1=students.lab@archive.lab"),
                // another instance's copy, and outside mail: not this replay's business
                deferred("Q3", "u1=other.lab@archive.lab"),
                deferred("Q4", "x@elsewhere.org"),
            ],
            files: BTreeMap::new(),
        });
        o.archive = Some(crate::model::ArchiveObservation {
            reachability: if archive_up {
                Reachability::Reachable
            } else {
                Reachability::Unreachable {
                    kind: crate::model::UnreachableKind::Timeout,
                    message: "no answer".into(),
                }
            },
            capabilities: Capabilities::default(),
            postfix: None,
            errors: vec![],
        });
        o
    };
    let p = plan(&s, &observed(true), now(), &converged_ctx());
    let text = render::text(&p, Some(&s));
    assert!(p.check(&s).is_empty(), "{:?}", p.check(&s));
    let id = |k: &str| p.id_of(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    let wait = id("node-b:wait_archived:students");
    assert!(
        matches!(&p.graph[wait].kind, ActionKind::WaitArchived { queue_ids, .. } if queue_ids == &["Q2".to_string()]),
        "{text}"
    );
    let restore = id("controller:arch_restore:students");
    let path = |a, b| petgraph::algo::has_path_connecting(&p.graph, a, b, None);
    assert!(path(id("node-b:flush_queue:queue"), wait), "{text}");
    assert!(path(wait, restore), "{text}");
    // the debt is cleared only after the replay, so after the wait
    let clear = p
        .graph
        .node_indices()
        .find(|i| {
            p.graph[*i]
                .id
                .ends_with("zdata/imap/students:spoolkeeper:replay:clear")
        })
        .unwrap_or_else(|| panic!("no clear in\n{text}"));
    assert!(path(wait, clear), "{text}");
    // the archive host away: the replay fails at once and stays owed, no minute of waiting
    let p = plan(&s, &observed(false), now(), &converged_ctx());
    assert!(
        p.id_of("node-b:wait_archived:students").is_none(),
        "{}",
        render::text(&p, Some(&s))
    );
}

fn scratch_clone(
    name: &str,
    origin: &str,
    snapshot: &str,
    purpose: &str,
    since: &str,
) -> crate::model::ScratchClone {
    crate::model::ScratchClone {
        name: name.into(),
        purpose: purpose.into(),
        since: Some(since.parse().unwrap()),
        origin_dataset: origin.into(),
        origin_snapshot: snapshot.into(),
    }
}

fn destroyed(p: &Plan) -> Vec<String> {
    p.actions()
        .into_iter()
        .filter_map(|a| match &a.kind {
            ActionKind::DestroySnapshots { snapshots, .. } => Some(snapshots.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_running_drill_is_left_alone_and_its_origin_kept_by_retention() {
    let mut o = converged();
    let old = snap("sk_20251101T000000Z", 1, "2025-11-01T00:00:00Z", 1);
    for n in ["node-a", "node-b"] {
        o.nodes.get_mut(n).unwrap().datasets[1]
            .snapshots
            .insert(0, old.clone());
    }
    let s = spec_with("node-a", &[]);
    // without a clone, retention prunes the old snapshot on both nodes
    let p = plan(&s, &o, now(), &converged_ctx());
    assert_eq!(destroyed(&p).len(), 2, "{}", render::text(&p, None));
    // a drill cloned it on node-b 5 minutes ago: kept there, the drill left alone
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .scratch
        .push(scratch_clone(
            "zdata/imap/staff_sk_drill_20261128T115500Z_7",
            "zdata/imap/staff",
            "sk_20251101T000000Z",
            "drill",
            "2026-11-28T11:55:00Z",
        ));
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(
        !kinds(&p).iter().any(|k| k.contains("teardown")),
        "{}",
        render::text(&p, None)
    );
    let on_b: Vec<_> = p
        .actions()
        .into_iter()
        .filter(|a| a.id.starts_with("node-b:destroy"))
        .cloned()
        .collect();
    assert!(on_b.is_empty(), "the clone's origin stays: {on_b:?}");
    assert_eq!(destroyed(&p).len(), 1, "still pruned on node-a");
}

#[test]
fn a_moving_service_tears_the_drill_down_first_and_a_stale_clone_goes() {
    // a switchover to node-b while a drill of staff runs there
    let s = spec_with("node-b", &[]);
    let mut o = before_move();
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .scratch
        .push(scratch_clone(
            "zdata/imap/staff_sk_drill_20261128T115500Z_7",
            "zdata/imap/staff",
            BASE,
            "drill",
            "2026-11-28T11:55:00Z",
        ));
    let p = plan(&s, &o, now(), &converged_ctx());
    assert!(!p.is_blocked(), "{}", render::text(&p, Some(&s)));
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i.starts_with(k))
            .unwrap_or_else(|| panic!("{k} not in {ids:#?}"))
    };
    let t = pos("node-b:teardown_scratch:zdata/imap/staff_sk_drill_");
    for later in [
        "node-b:set_readonly:zdata/imap/staff",
        "node-b:mount:zdata/imap/staff",
        "node-b:start_instance:staff",
    ] {
        assert!(
            t < pos(later),
            "teardown before {later}\n{}",
            render::text(&p, Some(&s))
        );
    }
    let teardown = p
        .actions()
        .into_iter()
        .find(|a| a.id.contains("teardown"))
        .unwrap()
        .clone();
    assert!(
        matches!(&teardown.kind, ActionKind::TeardownScratch { drill: Some(i), .. } if i == "staff"),
        "{teardown:?}"
    );
    assert!(p.check(&s).is_empty(), "{:?}", p.check(&s));

    // nothing moves, but a restore clone made 7 hours ago is left over: it goes
    let s = spec_with("node-a", &[]);
    let mut o = converged();
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .scratch
        .push(scratch_clone(
            "zdata/imap/students_sk_restore_20261128T050000Z_9",
            "zdata/imap/students",
            BASE,
            "restore",
            "2026-11-28T05:00:00Z",
        ));
    let p = plan(&s, &o, now(), &converged_ctx());
    assert_eq!(
        kinds(&p),
        vec!["node-b:teardown_scratch:zdata/imap/students_sk_restore_20261128T050000Z_9"],
        "{}",
        render::text(&p, None)
    );
    // and a name that is not a scratch clone's is never torn down by its listing
    assert!(crate::adapters::zfs::teardown_scratch_argv("zdata/imap/students").is_err());
}

#[test]
fn the_scheduler_wakes_when_a_scratch_clone_turns_stale() {
    // a restore clone made an hour ago on a converged cluster: nothing is planned now, and the
    // scheduler's next wake is no later than the first instant the planner tears it down
    let s = spec_with("node-a", &[]);
    let mut o = converged();
    let made: Timestamp = "2026-11-28T11:00:00Z".parse().unwrap();
    o.nodes
        .get_mut("node-b")
        .unwrap()
        .scratch
        .push(scratch_clone(
            "zdata/imap/students_sk_restore_20261128T110000Z_9",
            "zdata/imap/students",
            BASE,
            "restore",
            "2026-11-28T11:00:00Z",
        ));
    let t0 = made + jiff::SignedDuration::from_mins(30);
    assert!(plan(&s, &o, t0, &converged_ctx()).is_empty());
    let dues = crate::decide::schedule::dues(&s, &o, t0);
    let wake = dues
        .iter()
        .find(|w| matches!(w.due, crate::decide::schedule::Due::Scratch { .. }))
        .expect("a scratch due");
    let stale = made + SCRATCH_STALE;
    assert!(wake.at > stale && wake.at <= stale + jiff::SignedDuration::from_secs(1));
    assert!(
        !kinds(&plan(&s, &o, stale, &converged_ctx()))
            .iter()
            .any(|k| k.contains("teardown_scratch"))
    );
    // (snapshots fall due in those hours too: only the teardown is looked at)
    assert!(kinds(&plan(&s, &o, wake.at, &converged_ctx())).contains(
        &"node-b:teardown_scratch:zdata/imap/students_sk_restore_20261128T110000Z_9".to_string()
    ));
}

#[test]
fn the_stream_is_compressed_only_with_a_tool_both_ends_have() {
    use crate::adapters::zfs::Compressor;
    use crate::model::Compressors;
    let newer = snap("sk_20261128T115900Z", 777, "2026-11-28T11:59:00Z", 11);
    let now: Timestamp = "2026-11-28T12:55:00Z".parse().unwrap();
    let case = |a: Compressors, b: Compressors, setting: Option<&str>| {
        let mut o = converged();
        for d in &mut o.nodes.get_mut("node-a").unwrap().datasets {
            d.snapshots.push(newer.clone());
        }
        o.nodes.get_mut("node-a").unwrap().capabilities.compressors = a;
        o.nodes.get_mut("node-b").unwrap().capabilities.compressors = b;
        let mut text = SPEC.to_string();
        if let Some(c) = setting {
            text = text.replace(
                "replication: { every: 1h, rpo: 24h }",
                &format!("replication: {{ every: 1h, rpo: 24h, compress: {c} }}"),
            );
            assert!(
                text.contains("compress:"),
                "the test spec has a replication block"
            );
        }
        let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
        let p = plan(&s, &o, now, &converged_ctx());
        let a = p
            .actions()
            .into_iter()
            .find(|a| a.id == "node-a:replicate:zdata/imap/staff->node-b")
            .unwrap()
            .clone();
        match a.kind {
            ActionKind::Replicate { compress, .. } => (
                compress,
                crate::adapters::dispatch::commands(&s, &a).unwrap(),
            ),
            k => panic!("{k:?}"),
        }
    };
    let both = Compressors {
        zstd: true,
        lz4: true,
    };
    let lz4_only = Compressors {
        zstd: false,
        lz4: true,
    };
    let (c, cmds) = case(both, both, None);
    assert_eq!(c, Some(Compressor::Zstd));
    let line = cmds[0].join(" ");
    assert!(
        line.contains("status=progress | zstd -1 -T0 -q -c | ssh")
            && line.contains("zstd -d -q -c | zfs receive"),
        "{line}"
    );
    assert_eq!(case(both, lz4_only, None).0, Some(Compressor::Lz4));
    assert_eq!(case(Compressors::default(), both, None).0, None);
    assert_eq!(case(both, both, Some("none")).0, None);
    assert_eq!(case(both, lz4_only, Some("zstd")).0, None);
    assert_eq!(case(both, both, Some("lz4")).0, Some(Compressor::Lz4));
    // without one, the pipeline is the plain one
    let (_, plain) = case(Compressors::default(), Compressors::default(), None);
    assert!(!plain[0].join(" ").contains("zstd"), "{plain:?}");
}

fn own_postfix(
    dir: &str,
    queue: Vec<crate::model::QueueEntry>,
) -> crate::model::PostfixObservation {
    crate::model::PostfixObservation {
        settings: [("config_directory".to_string(), dir.to_string())].into(),
        queue,
        files: BTreeMap::new(),
    }
}

fn commands_of(s: &Spec, p: &Plan, id: &str) -> Vec<Vec<String>> {
    let a = p
        .actions()
        .into_iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("no {id} in\n{}", render::text(p, Some(s))))
        .clone();
    crate::adapters::dispatch::commands(s, &a).unwrap()
}

#[test]
fn a_jailed_instance_with_its_own_postfix_gets_its_bcc_through_jexec_before_it_starts() {
    // the seed's layout: students is an ezjail with its own Postfix; staff uses the node's
    let mut text = SPEC.replace(
        "      domains: [students.lab]\n",
        "      domains: [students.lab]\n      mail: { in: runtime }\n",
    );
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let mut o = converged();
    for n in o.nodes.values_mut() {
        n.postfix = Some(own_postfix("/etc/postfix", Vec::new()));
    }
    let a = o.nodes.get_mut("node-a").unwrap();
    a.instances
        .insert("students".into(), state(RunState::Stopped));
    a.instance_postfix.insert(
        "students".into(),
        own_postfix("/usr/jails/students/etc/postfix", Vec::new()),
    );
    let p = plan(&s, &o, now(), &converged_ctx());
    let t = render::text(&p, Some(&s));
    assert!(!p.is_blocked(), "{t}");
    let ids = kinds(&p);
    let pos = |k: &str| {
        ids.iter()
            .position(|i| i == k)
            .unwrap_or_else(|| panic!("no {k} in\n{t}"))
    };
    // the instance's own table and settings, every command through jexec
    let table = "node-a:write_file:students//usr/jails/students/etc/postfix/spoolkeeper-bcc.regexp";
    let conf = "node-a:postconf:students/main.cf";
    for id in [table, conf] {
        for argv in commands_of(&s, &p, id) {
            assert_eq!(&argv[..2], ["jexec", "imap-students"], "{id}: {argv:?}");
        }
    }
    // the jail is stopped: its Postfix reads the configuration when it starts, no reload
    let conf_cmds = commands_of(&s, &p, conf);
    assert_eq!(conf_cmds.len(), 1, "{conf_cmds:?}");
    assert_eq!(
        &conf_cmds[0][..4],
        ["jexec", "imap-students", "postconf", "-e"]
    );
    let content = |id: &str| match p
        .actions()
        .into_iter()
        .find(|a| a.id == id)
        .map(|a| &a.kind)
    {
        Some(ActionKind::WriteFile { content, .. }) => content.clone(),
        _ => panic!("no {id} in\n{t}"),
    };
    assert!(content(table).contains("students"), "{t}");
    assert!(!content(table).contains("staff"), "{t}");
    // the node's Postfix BCCs only the instances it serves
    let node_table = content("node-a:write_file:/etc/postfix/spoolkeeper-bcc.regexp");
    assert!(
        node_table.contains("staff") && !node_table.contains("students"),
        "{node_table}"
    );
    // the start reads the instance's own configuration: ordered after it
    assert!(pos(conf) < pos("node-a:start_instance:students"), "{t}");
}

#[test]
fn a_promoted_multi_instance_postfix_drops_its_own_queued_deliveries_with_its_config_directory() {
    let mut text = SPEC
        .replace("active: node-a", "active: node-b")
        .replace(
            "      domains: [students.lab]\n",
            "      domains: [students.lab]\n      mail: { in: runtime, postfix: { config_directory: /etc/postfix-students } }\n",
        )
        .replace(
            "runtime: { kind: ezjail, jail: imap-students }",
            "runtime: { kind: exec, start: [start, \"{instance}\"], stop: [stop, \"{instance}\"], status: [status, \"{instance}\"] }",
        );
    text.push_str("  fenced: [node-a, node-c]\n");
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let mut o = lost_active(false);
    let queued = crate::model::QueueEntry {
        queue_name: "deferred".into(),
        queue_id: "Q1".into(),
        arrival_time: now(),
        message_size: 1,
        forced_expire: false,
        sender: "s@x.org".into(),
        recipients: [crate::model::QueueRecipient::to("u1@students.lab")].into(),
    };
    let b = o.nodes.get_mut("node-b").unwrap();
    // the node's own Postfix queues the same id for another reason: never touched
    b.postfix = Some(own_postfix("/etc/postfix", vec![queued.clone()]));
    b.instance_postfix.insert(
        "students".into(),
        own_postfix("/etc/postfix-students", vec![queued]),
    );
    let p = plan(&s, &o, now(), &converged_ctx());
    let t = render::text(&p, Some(&s));
    let drops: Vec<&Action> = p
        .actions()
        .into_iter()
        .filter(|a| matches!(&a.kind, ActionKind::DropQueued { instance, .. } if instance == "students"))
        .collect();
    assert_eq!(drops.len(), 1, "{t}");
    assert_eq!(drops[0].mail.as_deref(), Some("students"), "{t}");
    assert_eq!(
        crate::adapters::dispatch::commands(&s, drops[0]).unwrap(),
        vec![vec!["postsuper", "-c", "/etc/postfix-students", "-d", "-"]]
    );
    assert!(p.check(&s).is_empty(), "{t}");
}

/// [`arb_case`] with an archive host and students' mail in its jail (its own Postfix), every
/// reachable node's Postfix observed, and the jail's own Postfix on some of them, queueing
/// deliveries of students.
fn arb_own_mail_case() -> impl Strategy<Value = (Spec, Observation)> {
    (
        arb_case(),
        prop::collection::vec((any::<bool>(), 0usize..3), 3),
    )
        .prop_map(|((s, mut o), own)| {
            let mut text = SPEC
                .replace("active: node-a", &format!("active: {}", s.spec.active))
                .replace(
                    "      domains: [students.lab]\n",
                    "      domains: [students.lab]\n      mail: { in: runtime }\n",
                );
            if !s.spec.fenced.is_empty() {
                let f: Vec<String> = s.spec.fenced.iter().map(|n| n.to_string()).collect();
                text.push_str(&format!("  fenced: [{}]\n", f.join(", ")));
            }
            text.push_str(
                "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
            );
            let spec = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
            for ((_, n), (seen, queued)) in o.nodes.iter_mut().zip(own) {
                if !n.reachability.is_reachable() {
                    continue;
                }
                n.postfix = Some(own_postfix("/etc/postfix", Vec::new()));
                if seen {
                    let queue = (0..queued)
                        .map(|k| crate::model::QueueEntry {
                            queue_name: "deferred".into(),
                            queue_id: format!("Q{k}").into(),
                            arrival_time: now(),
                            message_size: 1,
                            forced_expire: false,
                            sender: "s@x.org".into(),
                            recipients: [crate::model::QueueRecipient::to(&format!(
                                "u{k}@students.lab"
                            ))]
                            .into(),
                        })
                        .collect();
                    n.instance_postfix.insert(
                        "students".into(),
                        own_postfix("/usr/jails/students/etc/postfix", queue),
                    );
                }
            }
            (spec, o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// With an instance on its own Postfix: the plan's invariants hold (per mail system
    /// objects), every command of that Postfix runs through the jail, no other one does, and
    /// nothing of the node's Postfix ever touches the instance's queue.
    #[test]
    fn own_mail_systems_keep_the_invariants_and_their_commands((spec, o) in arb_own_mail_case()) {
        let p = plan(&spec, &o, now(), &converged_ctx());
        prop_assert!(p.order().is_ok());
        prop_assert!(p.check(&spec).is_empty(), "{:?}\n{}", p.check(&spec), render::text(&p, None));
        let invariant = p.blocked.iter().any(|b| matches!(b, Blocked::Invariant { .. }));
        prop_assert!(!invariant, "{:?}", p.blocked);
        for a in p.actions() {
            let cmds = crate::adapters::dispatch::commands(&spec, a).unwrap();
            match a.mail.as_deref() {
                Some(m) => {
                    prop_assert_eq!(m, "students");
                    for c in &cmds {
                        prop_assert_eq!(&c[..2], ["jexec", "imap-students"], "{}", a.id);
                    }
                }
                None => {
                    for c in &cmds {
                        prop_assert!(c[0] != "jexec", "{} runs in a jail without a mail system", a.id);
                    }
                }
            }
            // students' queued deliveries are dropped only from students' own Postfix
            if let ActionKind::DropQueued { instance, .. } = &a.kind {
                prop_assert_eq!(a.mail.as_deref(), (instance == "students").then_some("students"));
            }
        }
        // and the promised effects, on the right Postfix, converge
        if !p.is_blocked() {
            let mut after = o.clone();
            let mut ctx = converged_ctx();
            for a in p.actions() {
                effect::apply(&mut after, a);
                ctx.learn(a);
            }
            let again = plan(&spec, &after, now(), &ctx);
            let left: Vec<&Action> = again
                .actions()
                .into_iter()
                .filter(|a| a.mail.is_some() || matches!(a.kind, ActionKind::WriteFile { .. } | ActionKind::Postconf { .. }))
                .collect();
            prop_assert!(left.is_empty(), "mail steps left:\n{}\nthen:\n{}", render::text(&p, None), render::text(&again, None));
        }
    }
}

/// A converged cluster whose archive holds `2 * PURGE_BATCH + 1` provable copies of students,
/// one too fresh and one of staff: the purge test's setup.
fn purgeable_archive() -> (Spec, Observation, Context) {
    use crate::model::{ArchiveObservation, QueueEntry, QueueRecipient};
    let mut text = SPEC.to_owned();
    text.push_str(
        "  archive: { ssh: { host: arch }, address: \"{local}={domain}@archive.lab\" }\n",
    );
    let s = spec::parse(Path::new("t.yaml"), text.as_bytes()).unwrap();
    let mut o = converged();
    for n in o.nodes.values_mut() {
        n.capabilities.clock_offset_ms = Some(0);
        n.capabilities.clock_uncertainty_ms = Some(0);
    }
    let batch = super::archiving::PURGE_BATCH;
    let n = 2 * batch + 1;
    let old: Timestamp = "2026-11-28T09:00:00Z".parse().unwrap();
    let rcpts: std::sync::Arc<[QueueRecipient]> =
        [QueueRecipient::to("u1=students.lab@archive.lab")].into();
    let mut queue: Vec<QueueEntry> = (0..n)
        .map(|k| QueueEntry {
            queue_name: "hold".into(),
            queue_id: format!("H{k:07}").into(),
            arrival_time: old,
            message_size: 1,
            forced_expire: false,
            sender: "s@x.org".into(),
            recipients: rcpts.clone(),
        })
        .collect();
    // newer than the watermark, and one of another instance: both stay
    let mut fresh = queue[0].clone();
    fresh.queue_id = "FRESH".into();
    fresh.arrival_time = now();
    let mut staff = queue[0].clone();
    staff.queue_id = "STAFF".into();
    staff.recipients = [QueueRecipient::to("u1=staff.lab@archive.lab")].into();
    queue.push(fresh);
    queue.push(staff);
    let caps = Capabilities {
        clock_offset_ms: Some(0),
        clock_uncertainty_ms: Some(0),
        ..Default::default()
    };
    o.archive = Some(ArchiveObservation {
        reachability: Reachability::Reachable,
        capabilities: caps,
        postfix: Some(crate::model::PostfixObservation {
            settings: BTreeMap::new(),
            queue,
            files: BTreeMap::new(),
        }),
        errors: Vec::new(),
    });
    let mut ctx = converged_ctx();
    ctx.backlogs.insert(
        Context::backlog_key("zdata/imap/students", BASE),
        crate::decide::archive::SpoolBacklog::Empty,
    );
    (s, o, ctx)
}

#[test]
fn no_purge_while_a_passive_queue_waits_to_be_handed_over() {
    // simulator seed 12965: node-b (started by hand on the replica) queued a delivery it could
    // not make; its archive copy was the only one, and a purge deleted it while the replay
    // of node-b's queue waited for that queue to reach the archive host
    let (s, mut o, ctx) = purgeable_archive();
    assert!(
        plan(&s, &o, now(), &ctx)
            .actions()
            .iter()
            .any(|a| matches!(a.kind, ActionKind::PurgeArchive { .. })),
        "the setup must purge"
    );
    o.nodes.get_mut("node-b").unwrap().postfix = Some(crate::model::PostfixObservation {
        settings: BTreeMap::new(),
        queue: vec![
            // delivered to the archive already, the local delivery stale
            deferred("Q1", "u1@students.lab"),
            // its archive copy still on its way: the replay waits for it
            crate::model::QueueEntry {
                recipients: [
                    crate::model::QueueRecipient::to("u2@students.lab"),
                    crate::model::QueueRecipient::to("u2=students.lab@archive.lab"),
                ]
                .into(),
                ..deferred("Q2", "")
            },
        ],
        files: BTreeMap::new(),
    });
    let p = plan(&s, &o, now(), &ctx);
    let text = render::text(&p, Some(&s));
    assert!(
        p.id_of("node-b:flush_queue:queue").is_some(),
        "no hand-over of node-b's queue:\n{text}"
    );
    assert!(
        !p.actions().iter().any(|a| matches!(
            &a.kind,
            ActionKind::PurgeArchive { instance, .. } if instance == "students"
        )),
        "a purge while node-b's mail waits to be replayed:\n{text}"
    );
}

#[test]
fn a_large_archive_purge_is_planned_in_ordered_batches_of_every_provable_copy() {
    let batch = super::archiving::PURGE_BATCH;
    let n = 2 * batch + 1;
    let (s, o, ctx) = purgeable_archive();
    let p = plan(&s, &o, now(), &ctx);
    assert!(p.check(&s).is_empty(), "{:?}", p.check(&s));
    let purges: Vec<(&str, &[crate::model::QueueId])> = p
        .actions()
        .into_iter()
        .filter_map(|a| match &a.kind {
            ActionKind::PurgeArchive {
                instance,
                queue_ids,
                ..
            } => {
                assert_eq!(instance, "students");
                Some((a.id.as_str(), queue_ids.as_slice()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        purges.iter().map(|(_, q)| q.len()).collect::<Vec<_>>(),
        [batch, batch, 1],
        "{}",
        render::text(&p, Some(&s))
    );
    let all: BTreeSet<&str> = purges
        .iter()
        .flat_map(|(_, q)| q.iter().map(|q| q.as_str()))
        .collect();
    assert_eq!(all.len(), n);
    assert!(!all.contains("FRESH") && !all.contains("STAFF"));
    // one after the other: each batch waits for the one before it
    for w in purges.windows(2) {
        let (later, earlier) = (p.id_of(w[1].0).unwrap(), p.id_of(w[0].0).unwrap());
        assert!(
            p.depends_on(later).contains(&earlier),
            "{} is not ordered after {}",
            w[1].0,
            w[0].0
        );
    }
}
