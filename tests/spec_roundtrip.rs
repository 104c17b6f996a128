//! Property: a generated valid spec, serialised and parsed again, is equal to itself.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use spoolkeeper::spec::{
    self, Archive, ClusterName, ClusterSpec, DatasetPath, Document, Duration, Fencing, Instance,
    InstanceName, Keep, Metadata, Name, Node, NodeName, Notify, PropertyValue, Replication,
    Runtime, Snapshots, Ssh, Transport,
};

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?"
}

fn duration(min: u64) -> impl Strategy<Value = Duration> {
    (min..=30 * 86_400u64).prop_map(Duration::from_secs)
}

fn ssh(i: usize) -> impl Strategy<Value = Ssh> {
    (
        "[a-z]{1,8}(\\.[a-z]{2,5}){0,2}",
        prop::option::of("[a-z_][a-z0-9_-]{0,8}"),
        1u32..=65535,
        prop::option::of("/[a-z]{1,8}/known_hosts"),
        // ssh waits at most 10m for a connection (validation)
        prop::option::of((1..=600u64).prop_map(Duration::from_secs)),
    )
        .prop_map(move |(host, user, port, kh, ct)| Ssh {
            // Unique per node: two nodes must be two machines.
            host: format!("{host}{i}"),
            user: user.unwrap_or_else(|| "root".into()),
            port,
            known_hosts: kh.map(Into::into),
            identity: None,
            connect_timeout: ct,
        })
}

fn keep() -> impl Strategy<Value = Keep> {
    (0u32..100, 0u32..100, 0u32..60, 0u32..24, 1u32..5).prop_map(
        |(hourly, daily, weekly, monthly, yearly)| Keep {
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
        },
    )
}

fn runtime(i: usize) -> impl Strategy<Value = Runtime> {
    prop_oneof![
        Just(Runtime::Ezjail {
            jail: Name::new(&format!("jail{i}")).unwrap()
        }),
        Just(Runtime::Jail {
            jail: Name::new(&format!("j-{i}")).unwrap()
        }),
        prop::collection::vec("[a-zA-Z0-9 ./'\"$;*-]{1,12}", 1..4).prop_map(|argv| {
            Runtime::Exec {
                start: argv.clone(),
                stop: vec!["/bin/stop".into(), "{instance}".into()],
                status: vec!["/bin/status".into(), "{node}".into()],
            }
        }),
    ]
}

fn document() -> impl Strategy<Value = Document> {
    (
        name(),
        prop::collection::btree_set(name(), 2..4),
        prop::collection::btree_set(name(), 1..4),
        keep(),
        prop::option::of(keep()),
        (duration(1), duration(1), any::<bool>()),
        any::<bool>(),
        (0usize..4, duration(1)),
        prop::collection::btree_map("[a-z_]{1,10}", "[a-z0-9]{1,8}", 0..3),
    )
        .prop_flat_map(
            |(
                cluster,
                nodes,
                instances,
                keep,
                keep_passive,
                (every, extra, relay),
                archive,
                (active_i, margin),
                props,
            )| {
                let nodes: Vec<String> = nodes.into_iter().collect();
                let instances: Vec<String> = instances.into_iter().collect();
                let ssh_s: Vec<_> = (0..nodes.len()).map(ssh).collect();
                let rt_s: Vec<_> = (0..instances.len()).map(runtime).collect();
                (
                    Just(cluster),
                    Just(nodes),
                    Just(instances),
                    ssh_s,
                    rt_s,
                    Just((
                        keep,
                        keep_passive,
                        every,
                        extra,
                        relay,
                        archive,
                        active_i,
                        margin,
                        props,
                    )),
                )
            },
        )
        .prop_map(
            |(
                cluster,
                nodes,
                instances,
                sshs,
                rts,
                (keep, keep_passive, every, extra, relay, archive, active_i, margin, props),
            )| {
                let active = NodeName::new(&nodes[active_i % nodes.len()]).unwrap();
                let node_map: BTreeMap<NodeName, Node> = nodes
                    .iter()
                    .zip(sshs)
                    .map(|(n, ssh)| {
                        (
                            NodeName::new(n).unwrap(),
                            Node {
                                ssh,
                                pool: Name::new("zdata").unwrap(),
                            },
                        )
                    })
                    .collect();
                let inst_map: BTreeMap<InstanceName, Instance> = instances
                    .iter()
                    .zip(rts)
                    .enumerate()
                    .map(|(k, (i, runtime))| {
                        let properties = props
                            .iter()
                            .filter(|(p, _)| {
                                ![
                                    "readonly",
                                    "canmount",
                                    "mountpoint",
                                    "mounted",
                                    "quota",
                                    "refquota",
                                    "reservation",
                                    "refreservation",
                                    "recordsize",
                                    "volsize",
                                ]
                                .contains(&p.as_str())
                            })
                            .map(|(p, v)| (p.clone(), PropertyValue(v.clone())))
                            .collect();
                        (
                            InstanceName::new(i).unwrap(),
                            Instance {
                                dataset: DatasetPath::new(&format!("imap/{i}")).unwrap(),
                                runtime,
                                properties,
                                domains: vec![format!("d{k}.example.org")],
                                drill: (k % 2 == 0).then(|| spec::Drill {
                                    mountpoint: format!("/var/tmp/drill/{i}"),
                                    start: vec![
                                        "/usr/local/bin/drill".into(),
                                        "start".into(),
                                        "{mountpoint}".into(),
                                    ],
                                    stop: vec![
                                        "/usr/local/bin/drill".into(),
                                        "stop".into(),
                                        "{instance}".into(),
                                    ],
                                    imap: "127.0.0.1:10143".into(),
                                    lmtp: "127.0.0.1:10024".into(),
                                    probes: vec![format!("probe@d{k}.example.org")],
                                    login: "{user}*drill".into(),
                                    password_file: "/etc/spoolkeeper/drill.pass".into(),
                                    warn_after: spec::Duration::from_secs(86_400 * (k as u64 + 1)),
                                }),
                                mail: if k % 3 == 1 {
                                    spec::Mail {
                                        at: spec::MailAt::Runtime,
                                        postfix: Some(spec::PostfixInstance {
                                            config_directory: format!("/etc/postfix-{i}"),
                                        }),
                                        dovecot: Some(spec::DovecotInstance {
                                            config: format!("/etc/dovecot/{i}.conf"),
                                        }),
                                        prefix: Vec::new(),
                                    }
                                } else {
                                    spec::Mail::default()
                                },
                            },
                        )
                    })
                    .collect();
                let fenced = node_map
                    .keys()
                    .filter(|n| **n != active)
                    .take(1)
                    .cloned()
                    .collect();
                Document {
                    api_version: spec::API_VERSION.into(),
                    kind: spec::KIND.into(),
                    metadata: Metadata {
                        name: ClusterName::new(&cluster).unwrap(),
                    },
                    spec: ClusterSpec {
                        active,
                        nodes: node_map,
                        instances: inst_map,
                        snapshots: Snapshots {
                            prefix: Name::new("sk").unwrap(),
                            every,
                            keep,
                            keep_passive,
                        },
                        replication: Replication {
                            every,
                            rpo: Duration::from_secs(every.as_secs() + extra.as_secs()),
                            transport: if relay {
                                Transport::Relay
                            } else {
                                Transport::Direct
                            },
                            compress: if relay {
                                spoolkeeper::spec::Compress::None
                            } else {
                                spoolkeeper::spec::Compress::Auto
                            },
                        },
                        archive: archive.then(|| Archive {
                            ssh: Ssh {
                                host: "smtp-arch.example.org".into(),
                                user: "root".into(),
                                port: 22,
                                known_hosts: None,
                                identity: None,
                                connect_timeout: None,
                            },
                            address: "{local}={domain}@archive.invalid".parse().unwrap(),
                            margin,
                        }),
                        fencing: Some(Fencing {
                            command: vec!["/sbin/fence".into(), "{node}".into(), "{host}".into()],
                        }),
                        fenced,
                        notify: archive.then(|| Notify {
                            command: vec!["/usr/local/bin/page".into(), "{cluster}".into()],
                        }),
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn serialised_specs_parse_back_equal(doc in document()) {
        let text = yaml_serde::to_string(&doc).unwrap();
        let parsed = spec::parse(Path::new("generated.yaml"), text.as_bytes());
        let parsed = match parsed {
            Ok(s) => s,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
        };
        prop_assert_eq!(parsed.document(), doc);
    }
}
