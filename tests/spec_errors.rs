//! Table-driven bad-spec tests: each case makes one mistake in a valid spec and asserts the
//! exit code of `spoolkeeper validate`, the exact line (and column where it matters) and a
//! fragment of the message. The binary is run for real: what the operator sees is tested.

use std::path::PathBuf;
use std::process::Command;

const BASE: &str = r#"apiVersion: spoolkeeper/v1
kind: SpoolCluster
metadata:
  name: univ-mail
spec:
  active: node-a
  nodes:
    node-a:
      ssh: { host: imap-a.example.org, user: root, port: 22 }
      pool: zdata
    node-b:
      ssh: { host: imap-b.example.org }
      pool: zdata
  instances:
    students:
      dataset: imap/students
      runtime: { kind: ezjail, jail: imap-students }
      properties: { compression: lz4, quota: 80T }
      domains: [students.example.org]
    staff:
      dataset: imap/staff
      runtime: { kind: ezjail, jail: imap-staff }
      domains: [staff.example.org]
  snapshots:
    prefix: sk
    every: 1h
    keep: { hourly: 48, daily: 30, weekly: 8, monthly: 12, yearly: 1 }
  replication:
    every: 1h
    rpo: 24h
    transport: direct
  archive:
    ssh: { host: smtp-arch.example.org }
    address: "{local}={domain}@archive.invalid"
    margin: 10m
  fencing:
    command: ["ipmitool", "-H", "bmc-{node}", "chassis", "power", "off"]
  fenced: []
"#;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spoolkeeper"))
}

struct Run {
    code: i32,
    stderr: String,
}

fn validate_text(text: &[u8]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("spec.yaml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Replace exactly one occurrence of `from` in BASE.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(BASE.matches(from).count(), 1, "ambiguous edit {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_spec_is_valid() {
    let r = validate_text(BASE.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn each_single_mistake_is_rejected_with_its_location() {
    // (what, spec text, line, column or 0 when not asserted, message fragment)
    let cases: Vec<(&str, String, usize, usize, &str)> = vec![
        (
            "wrong apiVersion",
            edit("spoolkeeper/v1", "spoolkeeper/v2"),
            1,
            13,
            "expected `spoolkeeper/v1`",
        ),
        (
            "wrong kind",
            edit("kind: SpoolCluster", "kind: Cluster"),
            2,
            7,
            "expected `SpoolCluster`",
        ),
        (
            "a prefix of its own on a jail runtime",
            edit(
                "      domains: [staff.example.org]\n",
                "      domains: [staff.example.org]\n      mail: { in: runtime, prefix: [chroot, /x] }\n",
            ),
            24,
            28,
            "run through `jexec JAIL`",
        ),
        (
            "the instance's own Postfix with in: node",
            edit(
                "      domains: [staff.example.org]\n",
                "      domains: [staff.example.org]\n      mail: { postfix: { config_directory: /etc/postfix-staff } }\n",
            ),
            24,
            15,
            "it needs `in: runtime`",
        ),
        (
            "a relative Postfix config_directory",
            edit(
                "      domains: [staff.example.org]\n",
                "      domains: [staff.example.org]\n      mail: { in: runtime, postfix: { config_directory: etc/postfix } }\n",
            ),
            24,
            57,
            "not an absolute path",
        ),
        (
            "an unknown place for the mail",
            edit(
                "      domains: [staff.example.org]\n",
                "      domains: [staff.example.org]\n      mail: { in: jail }\n",
            ),
            24,
            19,
            "unknown variant `jail`",
        ),
        (
            "unknown top-level key",
            edit("kind: SpoolCluster\n", "kind: SpoolCluster\nstatus: {}\n"),
            3,
            1,
            "unknown field `status`",
        ),
        (
            "unknown key in a node",
            edit(
                "      pool: zdata\n    node-b:",
                "      pool: zdata\n      zone: x\n    node-b:",
            ),
            11,
            7,
            "unknown field `zone`",
        ),
        (
            "duplicate key",
            edit("    rpo: 24h\n", "    rpo: 24h\n    rpo: 48h\n"),
            31,
            5,
            "duplicate key `rpo`",
        ),
        (
            "duplicate node",
            edit(
                "    node-b:\n      ssh: { host: imap-b.example.org }\n      pool: zdata\n",
                "    node-a:\n      ssh: { host: imap-b.example.org }\n      pool: zdata\n",
            ),
            11,
            5,
            "duplicate key `node-a`",
        ),
        (
            "active is not a node",
            edit("active: node-a", "active: node-c"),
            6,
            11,
            "active node `node-c` is not one of the nodes",
        ),
        (
            "only one node",
            edit(
                "    node-b:\n      ssh: { host: imap-b.example.org }\n      pool: zdata\n",
                "",
            ),
            7,
            3,
            "at least two",
        ),
        (
            "upper-case node name",
            edit("    node-b:", "    Node-B:"),
            11,
            5,
            "node name `Node-B` is not valid",
        ),
        (
            "node name too long",
            edit("    node-b:", &format!("    {}:", "n".repeat(64))),
            11,
            5,
            "is not valid",
        ),
        (
            "bad pool name",
            edit(
                "      pool: zdata\n    node-b:",
                "      pool: z/data\n    node-b:",
            ),
            10,
            13,
            "pool name `z/data`",
        ),
        (
            "port out of range",
            edit("port: 22", "port: 70000"),
            9,
            58,
            "out of range",
        ),
        (
            "port zero",
            edit("port: 22", "port: 0"),
            9,
            58,
            "out of range",
        ),
        (
            "ssh host starting with a dash",
            edit("host: imap-b.example.org", "host: -oProxyCommand=x"),
            12,
            20,
            "not a host name",
        ),
        (
            "same host twice",
            edit("host: imap-b.example.org", "host: imap-a.example.org"),
            12,
            20,
            "same SSH host and port",
        ),
        (
            "absolute dataset",
            edit("dataset: imap/staff", "dataset: /imap/staff"),
            21,
            16,
            "dataset `/imap/staff` is not valid",
        ),
        (
            "dataset with a space",
            edit("dataset: imap/staff", "dataset: imap/st aff"),
            21,
            16,
            "is not valid",
        ),
        (
            "same dataset twice",
            edit("dataset: imap/staff", "dataset: imap/students"),
            21,
            16,
            "both use dataset `imap/students`",
        ),
        (
            "nested datasets",
            edit("dataset: imap/staff", "dataset: imap/students/staff"),
            21,
            16,
            "nested",
        ),
        (
            "unknown runtime kind",
            edit(
                "kind: ezjail, jail: imap-staff",
                "kind: docker, jail: imap-staff",
            ),
            22,
            24,
            "unknown variant `docker`",
        ),
        (
            "exec runtime field on ezjail",
            edit(
                "kind: ezjail, jail: imap-staff",
                "kind: ezjail, jail: imap-staff, start: [x]",
            ),
            22,
            50,
            "unknown field `start`",
        ),
        (
            "same jail twice",
            edit("jail: imap-staff", "jail: imap-students"),
            22,
            38,
            "both use jail `imap-students`",
        ),
        (
            "domain in two instances",
            edit(
                "domains: [staff.example.org]",
                "domains: [students.example.org]",
            ),
            23,
            17,
            "a domain belongs to one instance only",
        ),
        (
            "upper-case domain",
            edit(
                "domains: [staff.example.org]",
                "domains: [Staff.example.org]",
            ),
            23,
            17,
            "lower-case domain",
        ),
        (
            "missing domains with an archive",
            edit("      domains: [staff.example.org]\n", ""),
            20,
            5,
            "has no `domains`",
        ),
        (
            "bad duration",
            edit("every: 1h\n    keep", "every: hourly\n    keep"),
            26,
            12,
            "not a duration",
        ),
        (
            "bare number duration",
            edit("rpo: 24h", "rpo: 24"),
            30,
            10,
            "not a duration",
        ),
        (
            "negative retention",
            edit("hourly: 48", "hourly: -1"),
            27,
            21,
            "expected u32",
        ),
        (
            "retention all zero",
            edit(
                "{ hourly: 48, daily: 30, weekly: 8, monthly: 12, yearly: 1 }",
                "{ hourly: 0 }",
            ),
            27,
            5,
            "every retention count is 0",
        ),
        (
            "unknown retention key",
            edit("yearly: 1 }", "yearly: 1, decade: 1 }"),
            27,
            71,
            "unknown field `decade`",
        ),
        (
            "rpo shorter than replication",
            edit("rpo: 24h", "rpo: 30m"),
            30,
            10,
            "shorter than replication.every",
        ),
        (
            "rpo shorter than snapshots.every",
            edit("every: 1h\n    keep", "every: 2d\n    keep").replace("rpo: 24h", "rpo: 1d"),
            30,
            10,
            "shorter than snapshots.every",
        ),
        (
            "upper-case duration unit (M reads as months or megabytes)",
            edit("margin: 10m", "margin: 10M"),
            35,
            13,
            "lower case",
        ),
        (
            "absurd duration",
            edit("margin: 10m", "margin: 99999d"),
            35,
            13,
            "ten years",
        ),
        (
            "fractional duration",
            edit("every: 1h\n    rpo", "every: 1.5h\n    rpo"),
            29,
            12,
            "not a duration",
        ),
        (
            "archive address with a tab (the BCC table could not be built)",
            edit(
                "{local}={domain}@archive.invalid",
                "{local}={domain}\\t@archive.invalid",
            ),
            34,
            14,
            "control character",
        ),
        (
            "archive address with a zero-width space",
            edit(
                "{local}={domain}@archive.invalid",
                "{local}=\u{200b}{domain}@archive.invalid",
            ),
            34,
            14,
            "non-ASCII",
        ),
        (
            "archive host is a node (spelled differently)",
            edit("host: smtp-arch.example.org", "host: IMAP-B.example.org."),
            33,
            18,
            "is node `node-b`",
        ),
        (
            "archive host is a node (IPv6 spellings)",
            edit("host: imap-b.example.org", "host: \"2001:db8::1\"").replace(
                "host: smtp-arch.example.org",
                "host: \"2001:0db8:0:0::0001\"",
            ),
            33,
            18,
            "is node `node-b`",
        ),
        (
            "connect timeout ssh would never wait out",
            edit(
                "host: imap-b.example.org }",
                "host: imap-b.example.org, connect_timeout: 30d }",
            ),
            0,
            0,
            "longer than 600s",
        ),
        (
            "a YAML tag (silently dropped before)",
            edit("margin: 10m", "margin: !duration 10m"),
            35,
            23,
            "YAML tag `!duration`",
        ),
        (
            "unknown transport",
            edit("transport: direct", "transport: carrier-pigeon"),
            31,
            16,
            "unknown variant `carrier-pigeon`",
        ),
        (
            "bad size",
            edit("quota: 80T", "quota: 80X"),
            18,
            46,
            "not a size",
        ),
        (
            "managed property",
            edit("compression: lz4,", "readonly: on, compression: lz4,"),
            18,
            21,
            "managed by spoolkeeper",
        ),
        (
            "address without {domain}",
            edit(
                "{local}={domain}@archive.invalid",
                "{local}@archive.invalid",
            ),
            34,
            14,
            "exactly once",
        ),
        (
            "ambiguous address",
            edit(
                "{local}={domain}@archive.invalid",
                "{local}.{domain}@archive.invalid",
            ),
            34,
            14,
            "cannot appear in a domain name",
        ),
        (
            "archive domain is an instance domain",
            edit(
                "{local}={domain}@archive.invalid",
                "{local}={domain}@staff.example.org",
            ),
            34,
            14,
            "loop back",
        ),
        (
            "fencing command is a string",
            edit(
                "command: [\"ipmitool\", \"-H\", \"bmc-{node}\", \"chassis\", \"power\", \"off\"]",
                "command: \"ipmitool -H bmc\"",
            ),
            37,
            14,
            "expected a sequence",
        ),
        (
            "fencing command empty",
            edit(
                "command: [\"ipmitool\", \"-H\", \"bmc-{node}\", \"chassis\", \"power\", \"off\"]",
                "command: []",
            ),
            37,
            5,
            "non-empty argv",
        ),
        (
            "unknown fencing placeholder",
            edit("bmc-{node}", "bmc-{nodename}"),
            37,
            33,
            "unknown placeholder `{nodename}`",
        ),
        (
            "fenced names an unknown node",
            edit("fenced: []", "fenced: [node-z]"),
            38,
            12,
            "not one of the nodes",
        ),
        (
            "fenced names the active node",
            edit("fenced: []", "fenced: [node-a]"),
            38,
            12,
            "is the active node",
        ),
        (
            "tab indentation",
            edit("  name: univ-mail", "\tname: univ-mail"),
            4,
            0,
            "YAML syntax",
        ),
        (
            "unterminated quote",
            edit(
                "\"{local}={domain}@archive.invalid\"",
                "\"{local}={domain}@archive.invalid",
            ),
            0,
            0,
            "YAML syntax",
        ),
        (
            "two documents",
            format!("{BASE}---\n{BASE}"),
            39,
            1,
            "one YAML document",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (what, text, line, col, fragment) in &cases {
        let r = validate_text(text.as_bytes());
        let first = r.stderr.lines().next().unwrap_or("");
        // FILE:LINE:COL: message
        let mut parts = first.splitn(4, ':');
        let _file = parts.next();
        let got_line: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let got_col: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let ok = r.code == 1
            && (*line == 0 || got_line == *line)
            && (*col == 0 || got_col == *col)
            && r.stderr.contains(fragment);
        if !ok {
            failures.push(format!(
                "{what}: expected exit 1 at {line}:{col} with {fragment:?}; got exit {} and\n{}",
                r.code, r.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn all_semantic_problems_are_reported_at_once() {
    let text = edit("active: node-a", "active: node-c").replace("port: 22", "port: 0");
    let r = validate_text(text.as_bytes());
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(":6:11: active node"), "{}", r.stderr);
    assert!(r.stderr.contains(":9:58: port 0"), "{}", r.stderr);
    assert!(r.stderr.contains("2 problems found"), "{}", r.stderr);
}

#[test]
fn hostile_inputs_get_a_clear_error() {
    // Non-UTF-8: the position of the first bad byte.
    let mut bytes = b"apiVersion: spoolkeeper/v1\nkind: \xff\n".to_vec();
    let r = validate_text(&bytes);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(":2:7: not valid UTF-8"), "{}", r.stderr);
    // Empty.
    let r = validate_text(b"  \n");
    assert!(
        r.code == 1 && r.stderr.contains(":1:1: empty file"),
        "{}",
        r.stderr
    );
    // Huge: refused before parsing.
    bytes = vec![b'#'; 3 << 20];
    let r = validate_text(&bytes);
    assert!(r.code == 1 && r.stderr.contains("at most"), "{}", r.stderr);
    // An alias bomb in a field that takes a scalar: refused, not expanded.
    let mut bomb = String::from("x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let r = validate_text(bomb.as_bytes());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let many: String = (0..100).map(|i| format!("k{i}: *a\n")).collect::<String>();
    let r = validate_text(format!("a: &a 1\n{many}").as_bytes());
    assert!(r.code == 1 && r.stderr.contains("aliases"), "{}", r.stderr);
    // Control characters from the spec are never echoed raw to the terminal (an escape
    // sequence in a name could rewrite the operator's screen).
    let r = validate_text(edit("name: univ-mail", "name: \"univ\\e[2Jmail\"").as_bytes());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    assert!(r.stderr.contains("\\u{1b}"), "{}", r.stderr);
    // Deep nesting.
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = validate_text(deep.as_bytes());
    assert_eq!(r.code, 1, "{}", r.stderr);
}

#[test]
fn a_directory_is_read_file_by_file_and_cluster_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("b.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a spec").unwrap();
    let out = Command::new(bin())
        .args(["validate", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("b.yaml:1:1: cluster name `univ-mail` is already used"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("b.yaml"),
        BASE.replace("univ-mail", "other"),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["validate", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_examples_validate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(
            first.starts_with("# yaml-language-server: $schema=../specs/spoolkeeper.schema.json"),
            "{} lacks the schema line",
            p.display()
        );
        let out = Command::new(bin())
            .args(["validate", "-f"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_committed_schema_is_the_printed_one() {
    let out = Command::new(bin()).arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("specs/spoolkeeper.schema.json")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "specs/spoolkeeper.schema.json is stale: run `cargo run -- schema > specs/spoolkeeper.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
}
