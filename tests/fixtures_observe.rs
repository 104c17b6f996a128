//! Parser tests on recorded outputs (see tests/fixtures/SOURCES.md).

use spoolkeeper::adapters::{jail, postfix, zfs};
use spoolkeeper::model::{DatasetKind, RunState, ZfsFlavour};

fn fixture(p: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn zfs_fuse_listing() {
    let f = std::fs::File::open(format!(
        "{}/tests/fixtures/zfs-fuse/zfs-get-Hp-r.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let ds = zfs::parse_listing(f).unwrap();
    let names: Vec<_> = ds.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        ["skpool/imap", "skpool/imap/staff", "skpool/imap/students"]
    );
    let st = &ds[2];
    assert_eq!(st.kind, DatasetKind::Filesystem);
    assert_eq!(st.guid, Some(9354705797256631158));
    assert_eq!(st.mounted, Some(true));
    assert_eq!(st.readonly, Some(false));
    assert_eq!(st.user_properties["spoolkeeper:role"], "active");
    assert_eq!(st.user_properties["spoolkeeper:watermark"], "1700000000");
    assert!(ds[0].user_properties.is_empty(), "'-' is not a value");
    assert_eq!(st.receive_resume_token, None);
    let snaps: Vec<_> = st
        .snapshots
        .iter()
        .map(|s| (s.name.as_str(), s.createtxg, s.userrefs))
        .collect();
    assert_eq!(
        snaps,
        [
            ("sk-2024-01-01T00:00Z", Some(22), 0),
            ("sk-2024-01-01T01:00Z", Some(33), 2),
            ("manual", Some(38), 0)
        ]
    );
    assert_eq!(st.snapshots[1].guid, 5244425109028755640);
    assert_eq!(st.snapshots[0].used, 90112);
    assert_eq!(st.snapshots[0].creation.as_second(), 1795890297);
}

#[test]
fn zfs_fuse_capabilities_and_errors() {
    let usage = fixture("zfs-fuse/zfs-usage.txt");
    let c = zfs::detect_capabilities(false, &fixture("zfs-fuse/zfs-version.txt"), &usage).unwrap();
    assert_eq!(c.flavour, ZfsFlavour::ZfsFuse);
    assert!(!c.list_p && !c.resume_tokens && !c.bookmarks && !c.batch_destroy && !c.holds_list);
    assert_eq!(c.version, None);
    assert_eq!(
        zfs::missing_datasets(&fixture("zfs-fuse/zfs-get-missing.txt")),
        ["skpool/does-not-exist"]
    );
    let props = zfs::listing_properties(Some(&c), &[], &[]);
    assert!(!props.iter().any(|p| p == "receive_resume_token"));
}

#[test]
fn openzfs_listing_and_capabilities() {
    let c = zfs::detect_capabilities(
        true,
        &fixture("openzfs/zfs-version.txt"),
        &fixture("openzfs/zfs-usage.txt"),
    )
    .unwrap();
    assert_eq!(c.flavour, ZfsFlavour::OpenZfs);
    assert_eq!(c.version.as_deref(), Some("2.1.9-1"));
    assert!(c.list_p && c.resume_tokens && c.bookmarks && c.batch_destroy && c.holds_list);
    let props = zfs::listing_properties(Some(&c), &[], &[]);
    assert!(props.iter().any(|p| p == "receive_resume_token"));

    let ds = zfs::parse_listing_bytes(fixture("openzfs/zfs-get-Hp-r.txt").as_bytes()).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(
        ds[0].receive_resume_token.as_deref(),
        Some("1-e604ea4bf-e0-789c63a2a")
    );
    assert_eq!(ds[0].readonly, Some(true));
    assert_eq!(ds[0].mountpoint.as_deref(), Some("none"));
    assert_eq!(ds[0].snapshots[0].guid, 17046395512963010212);
    assert_eq!(ds[0].snapshots[0].userrefs, 1);
}

#[test]
fn postqueue_hold_deferred_active() {
    let q = postfix::parse_postqueue(&fixture("postfix/postqueue-j.jsonl")).unwrap();
    let queues: Vec<_> = q.iter().map(|e| e.queue_name.as_str()).collect();
    assert_eq!(queues, ["active", "deferred", "hold"]);
    let hold = &q[2];
    assert_eq!(hold.sender, "alice@students.lab".into());
    assert_eq!(hold.recipients.len(), 2);
    assert_eq!(
        hold.recipients[0].address,
        "bob=students.lab@archive.invalid".into()
    );
    assert_eq!(
        q[1].recipients[0].delay_reason.as_deref(),
        Some("connect to 127.0.0.1[127.0.0.1]:2: Connection refused")
    );
    assert_eq!(q[0].sender, "MAILER-DAEMON".into());
    assert!(!q[0].forced_expire);
    assert_eq!(q[0].arrival_time.as_second(), 1795890359);
    let obs = spoolkeeper::model::PostfixObservation {
        settings: Default::default(),
        queue: q,
        files: Default::default(),
    };
    assert_eq!(obs.held().count(), 1);
}

#[test]
fn postconf_outputs() {
    let n = postfix::parse_postconf(&fixture("postfix/postconf-n.txt"));
    assert_eq!(n["myhostname"], "sk-rec.test");
    assert_eq!(n["header_checks"], "regexp:/etc/postfix/hold_checks");
    let caps = postfix::detect_capabilities(&fixture("postfix/postconf-mail_version.txt")).unwrap();
    assert_eq!(caps.version, "3.7.11");
    assert!(caps.postqueue_json);
    assert!(postfix::parse_postconf(&fixture("postfix/postconf-h-unknown.txt")).is_empty());
}

#[test]
fn ezjail_running_stopped_norun() {
    let l = jail::parse_ezjail_list(&fixture("jail/ezjail-list-running-stopped.txt"));
    assert_eq!(l.len(), 4);
    assert_eq!(l[0].hostname, "webserver");
    assert_eq!(l[0].jid, Some(2));
    assert!(l[0].running());
    let c = l.iter().find(|e| e.hostname == "cleanser").unwrap();
    assert!(!c.running() && !c.norun());
    assert_eq!(c.jid, None);
    assert_eq!(c.state().state, RunState::Stopped);

    let n = jail::parse_ezjail_list(&fixture("jail/ezjail-list-norun.txt"));
    assert_eq!(n.len(), 2);
    assert!(!n[0].norun());
    assert!(n[1].norun());
    assert_eq!(n[1].state().norun, Some(true));

    let m = jail::parse_ezjail_list(&fixture("jail/ezjail-list-multi-ip.txt"));
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].ips,
        [
            "10.0.1.41/24",
            "re0|2a01:4f8:210:41e6::1:41:1/100",
            "lo1|127.0.1.41/24",
            "lo1|::1:41/100"
        ]
    );
    assert_eq!(m[0].state().state, RunState::Running);
}

#[test]
fn jls_json_and_text() {
    let j = jail::parse_jls_json(&fixture("jail/jls-v-libxo.json")).unwrap();
    assert_eq!(j.len(), 3);
    assert_eq!(j[1].jid, Some(105));
    assert_eq!(j[1].name.as_deref(), Some("sto2"));
    assert_eq!(jail::jls_state(&j, "git6").state, RunState::Running);
    assert_eq!(
        jail::jls_state(&j, "imap-students").state,
        RunState::Stopped
    );
    let m = jail::parse_jls_json(&fixture("jail/jls-libxo-name-meta.json")).unwrap();
    assert_eq!(m[0].name.as_deref(), Some("jail1"));
    assert_eq!(m[0].jid, None);

    let t = jail::parse_jls_verbose(&fixture("jail/jls-v.txt")).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].jid, Some(2));
    assert_eq!(t[0].name.as_deref(), Some("imap-students"));
    assert_eq!(t[0].path.as_deref(), Some("/usr/jails/imap-students"));
    assert_eq!(
        jail::jls_state(&t, "imap-students").state,
        RunState::Running
    );
    assert_eq!(
        jail::jls_state(&t, "imap-staff").state,
        RunState::Stopped,
        "DYING is not serving"
    );
}

#[test]
fn exec_runtime_status_codes() {
    assert_eq!(jail::exec_state(Some(0), "").state, RunState::Running);
    assert_eq!(jail::exec_state(Some(3), "").state, RunState::Stopped);
    assert_eq!(
        jail::exec_state(Some(127), "not found").state,
        RunState::Unknown
    );
    assert_eq!(jail::exec_state(None, "").state, RunState::Unknown);
}

#[test]
fn legacy_freebsd_zfs_usage_has_glued_lines_and_aliases() {
    // FreeBSD 11.1 (zrep issue #66): `bookmark` glued to `rename -u` with a TAB; the
    // recording stops before `receive`, whose FreeBSD 11.2 lines (zrep PR #135) follow
    let mut usage = fixture("freebsd/zfs-usage-11.1-partial.txt");
    assert!(
        usage.contains("<filesystem>\tbookmark"),
        "the fixture keeps the glued line"
    );
    usage.push_str(
        "\treceive|recv [-vnsFu] <filesystem|volume|snapshot>\n\treceive|recv [-vnsFu] [-o origin=<snapshot>] [-d | -e] <filesystem>\n\treceive|recv -A <filesystem|volume>\n",
    );
    let c = zfs::detect_capabilities(false, "missing command", &usage).unwrap();
    assert_eq!(c.flavour, ZfsFlavour::OpenZfs, "bookmarks: not zfs-fuse");
    assert!(
        c.bookmarks && c.resume_tokens && c.list_p && c.batch_destroy,
        "{c:?}"
    );
    assert_eq!(c.version, None);
}

#[test]
fn openzfs_2_usage_recorded_on_linux() {
    let c =
        zfs::detect_capabilities(false, "", &fixture("openzfs/zfs-usage-2.2-linux.txt")).unwrap();
    assert!(
        c.bookmarks && c.resume_tokens && c.list_p && c.batch_destroy && c.holds_list,
        "{c:?}"
    );
}

#[test]
fn holds_without_dash_h_are_refused_not_read_as_none() {
    let e = zfs::parse_holds(&fixture("openzfs/zfs-holds-noH.txt")).unwrap_err();
    assert!(e.contains("line 1") && e.contains("ignored -H"), "{e}");
}

#[test]
fn jls_text_is_cut_by_column_not_by_whitespace() {
    let t = jail::parse_jls_plain(&fixture("jail/jls-plain-freenas.txt")).unwrap();
    assert_eq!(t.len(), 4);
    assert_eq!(t[3].jid, Some(4));
    assert_eq!(t[3].hostname.as_deref(), Some("transmission_1"));
    assert_eq!(t[3].path.as_deref(), Some("/mnt/HQ/jails/transmission_1"));
    // `jls -Nv` (path shortened by its author with `...`): the name is cut at 29 characters
    let v = jail::parse_jls_verbose(&fixture("jail/jls-Nv-ocijail-edited.txt")).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].hostname.as_deref(), Some("radarr"));
    assert_eq!(v[0].name.as_deref(), Some("bd6e12376e5da10907aefd0db2084"));
    assert_eq!(v[0].state.as_deref(), Some("ACTIVE"));
    // hostnames with spaces and empty ones, laid out with jls.c's own widths (no real
    // recording found: constructed from the format string)
    let rec = |jid: u32, host: &str, path: &str, name: &str| {
        format!("{jid:>6}  {host:<29.29} {path}\n        {name:<29.29} ACTIVE\n        3\n")
    };
    let text = format!(
        "   JID  Hostname                      Path\n        Name                          State\n        CPUSetID\n        IP Address(es)\n{}{}",
        rec(7, "hastd: disk1 (primary)", "/jails/hast", "hast"),
        rec(8, "", "/jails/empty", "imap-students")
    );
    let v = jail::parse_jls_verbose(&text).unwrap();
    assert_eq!(v[0].hostname.as_deref(), Some("hastd: disk1 (primary)"));
    assert_eq!(v[0].path.as_deref(), Some("/jails/hast"));
    assert_eq!(v[1].hostname.as_deref(), Some(""));
    assert_eq!(v[1].path.as_deref(), Some("/jails/empty"));
    assert_eq!(
        jail::jls_state(&v, "imap-students").state,
        RunState::Running
    );
    // JSON with an empty hostname (kleened's recording)
    let j = jail::parse_jls_json(&fixture("jail/jls-v-libxo-empty-hostname.json")).unwrap();
    assert_eq!(j[0].hostname.as_deref(), Some(""));
    assert_eq!(j[0].name.as_deref(), Some("83"));
    // not jls output: refused, never an empty list
    assert!(jail::parse_jls_verbose("jls: jail \"x\" not found\n").is_err());
    assert!(jail::parse_jls_plain("sh: jls: not found\n").is_err());
}
