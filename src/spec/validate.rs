//! Semantic checks run after parsing. Each returns every problem it finds, with the path of
//! the key (or value) to point at; `mod.rs` turns paths into lines and columns.

use std::collections::BTreeMap;

use super::{
    API_VERSION, ClusterSpec, Document, KIND, Keep, Runtime, Ssh, is_dataset_path, is_domain,
    is_name,
};

pub(super) struct Problem {
    pub path: Vec<String>,
    pub message: String,
    /// Point at the value rather than the key (e.g. a wrong `active:` value).
    pub at_value: bool,
    /// For a clash between two places: the other one. The message points at whichever of
    /// the two comes later in the file, as a reader expects.
    pub other: Option<Vec<String>>,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn key(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(path, message, false);
    }
    fn value(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(path, message, true);
    }
    /// A clash between `path` and `other` (same dataset, jail, domain, host...).
    fn clash(&mut self, path: &[&str], other: &[&str], message: impl Into<String>) {
        self.push(path, message, true);
        if let Some(last) = self.0.last_mut() {
            last.other = Some(other.iter().map(|s| (*s).to_owned()).collect());
        }
    }
    fn push(&mut self, path: &[&str], message: impl Into<String>, at_value: bool) {
        self.0.push(Problem {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            message: message.into(),
            at_value,
            other: None,
        });
    }
}

const NAME_RULE: &str = "at most 63 characters of a-z, 0-9 and inner `-` or `_`";

/// ZFS properties spoolkeeper sets itself: a spec may not fight over them.
const MANAGED_PROPERTIES: &[&str] = &["readonly", "canmount", "mountpoint", "mounted"];
/// ZFS properties whose values are sizes.
pub(crate) const SIZE_PROPERTIES: &[&str] = &[
    "quota",
    "refquota",
    "reservation",
    "refreservation",
    "recordsize",
    "volsize",
];

pub(super) fn check(doc: &Document) -> Vec<Problem> {
    let mut p = Problems::default();
    if doc.api_version != API_VERSION {
        p.value(
            &["apiVersion"],
            format!(
                "apiVersion `{}` is not supported: expected `{API_VERSION}`",
                doc.api_version
            ),
        );
    }
    if doc.kind != KIND {
        p.value(
            &["kind"],
            format!("kind `{}` is not supported: expected `{KIND}`", doc.kind),
        );
    }
    if !is_name(doc.metadata.name.as_str()) {
        p.value(
            &["metadata", "name"],
            format!(
                "cluster name `{}` is not valid: {NAME_RULE}",
                doc.metadata.name
            ),
        );
    }
    check_spec(&doc.spec, &mut p);
    p.0
}

fn check_spec(s: &ClusterSpec, p: &mut Problems) {
    // Nodes.
    if s.nodes.len() < 2 {
        p.key(
            &["spec", "nodes"],
            format!(
                "{} node(s) declared: a spool cluster needs at least two (an active and a passive)",
                s.nodes.len()
            ),
        );
    }
    if !s.nodes.contains_key(&s.active) {
        p.value(
            &["spec", "active"],
            format!(
                "active node `{}` is not one of the nodes ({})",
                s.active,
                join(s.nodes.keys().map(|n| n.as_str()))
            ),
        );
    }
    let mut endpoints: BTreeMap<(String, u32), &str> = BTreeMap::new();
    for (name, node) in &s.nodes {
        let n = name.as_str();
        if !is_name(n) {
            p.key(
                &["spec", "nodes", n],
                format!("node name `{n}` is not valid: {NAME_RULE}"),
            );
        }
        if !is_name(node.pool.as_str()) {
            p.value(
                &["spec", "nodes", n, "pool"],
                format!("pool name `{}` is not valid: {NAME_RULE}", node.pool),
            );
        }
        check_ssh(&node.ssh, &["spec", "nodes", n, "ssh"], p);
        let ep = (node.ssh.host.to_ascii_lowercase(), node.ssh.port);
        if let Some(other) = endpoints.insert(ep, n) {
            p.clash(
                &["spec", "nodes", n, "ssh", "host"],
                &["spec", "nodes", other, "ssh", "host"],
                format!(
                    "nodes `{other}` and `{n}` have the same SSH host and port: two nodes must be two machines"
                ),
            );
        }
    }

    // Instances.
    if s.instances.is_empty() {
        p.key(&["spec", "instances"], "no instance declared");
    }
    let mut datasets: BTreeMap<&str, &str> = BTreeMap::new();
    let mut jails: BTreeMap<&str, &str> = BTreeMap::new();
    let mut domains: BTreeMap<String, (&str, usize)> = BTreeMap::new();
    for (name, inst) in &s.instances {
        let i = name.as_str();
        if !is_name(i) {
            p.key(
                &["spec", "instances", i],
                format!("instance name `{i}` is not valid: {NAME_RULE}"),
            );
        }
        let ds = inst.dataset.as_str();
        if !is_dataset_path(ds) {
            p.value(
                &["spec", "instances", i, "dataset"],
                format!(
                    "dataset `{ds}` is not valid: names joined by `/`, each {NAME_RULE} (relative to the pool, no leading `/`)"
                ),
            );
        }
        for (other_ds, other) in &datasets {
            let nested =
                ds.starts_with(&format!("{other_ds}/")) || other_ds.starts_with(&format!("{ds}/"));
            if ds == *other_ds || nested {
                p.clash(
                    &["spec", "instances", i, "dataset"],
                    &["spec", "instances", other, "dataset"],
                    if nested {
                        format!(
                            "instances `{other}` and `{i}` have nested datasets (`{other_ds}`, `{ds}`): each instance needs its own, not nested"
                        )
                    } else {
                        format!(
                            "instances `{other}` and `{i}` both use dataset `{ds}`: each instance needs its own"
                        )
                    },
                );
            }
        }
        datasets.insert(ds, i);
        match &inst.runtime {
            Runtime::Ezjail { jail } | Runtime::Jail { jail } => {
                let j = jail.as_str();
                if !is_name(j) {
                    p.value(
                        &["spec", "instances", i, "runtime", "jail"],
                        format!("jail name `{j}` is not valid: {NAME_RULE}"),
                    );
                }
                if let Some(other) = jails.insert(j, i) {
                    p.clash(
                        &["spec", "instances", i, "runtime", "jail"],
                        &["spec", "instances", other, "runtime", "jail"],
                        format!("instances `{other}` and `{i}` both use jail `{j}`"),
                    );
                }
            }
            Runtime::Exec {
                start,
                stop,
                status,
            } => {
                for (key, argv) in [("start", start), ("stop", stop), ("status", status)] {
                    check_argv(
                        argv,
                        &["{instance}", "{node}"],
                        &["spec", "instances", i, "runtime", key],
                        p,
                    );
                }
            }
        }
        check_mail(i, inst, p);
        if let Some(d) = &inst.drill {
            for (key, argv) in [("start", &d.start), ("stop", &d.stop)] {
                check_argv(
                    argv,
                    &["{instance}", "{node}", "{mountpoint}"],
                    &["spec", "instances", i, "drill", key],
                    p,
                );
            }
            if !d.mountpoint.starts_with('/') || d.mountpoint.split('/').any(|c| c == "..") {
                p.value(
                    &["spec", "instances", i, "drill", "mountpoint"],
                    "an absolute path without `..` is needed",
                );
            }
            for key in ["imap", "lmtp"] {
                let v = if key == "imap" { &d.imap } else { &d.lmtp };
                if v.parse::<core::net::SocketAddr>().is_err() {
                    p.value(
                        &["spec", "instances", i, "drill", key],
                        format!("`{v}` is not ADDRESS:PORT (`127.0.0.1:10143`)"),
                    );
                }
            }
            if d.probes.is_empty() {
                p.value(
                    &["spec", "instances", i, "drill", "probes"],
                    "a drill needs at least one probe mailbox",
                );
            }
            for (n, u) in d.probes.iter().enumerate() {
                if u.is_empty() || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    let idx = n.to_string();
                    p.value(
                        &["spec", "instances", i, "drill", "probes", &idx],
                        format!("`{u}` is not a mailbox user name"),
                    );
                }
            }
            if !d.login.contains("{user}") {
                p.value(
                    &["spec", "instances", i, "drill", "login"],
                    "the login must contain `{user}`",
                );
            }
        }
        for (prop, value) in &inst.properties {
            let path = ["spec", "instances", i, "properties", prop.as_str()];
            if !is_property_name(prop) {
                p.key(
                    &path,
                    format!(
                        "`{prop}` is not a ZFS property name (native: a-z and `_`; user: `module:name`)"
                    ),
                );
            } else if MANAGED_PROPERTIES.contains(&prop.as_str()) {
                p.key(
                    &path,
                    format!(
                        "`{prop}` is managed by spoolkeeper (the active copy is writable and mounted, the passive read-only and unmounted); remove it"
                    ),
                );
            }
            let v = value.0.as_str();
            if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
                p.value(
                    &path,
                    "property value must be non-empty, at most 1024 characters, without control characters",
                );
            } else if SIZE_PROPERTIES.contains(&prop.as_str())
                && v != "none"
                && v.parse::<super::Size>().is_err()
            {
                p.value(
                    &path,
                    format!("`{v}` is not a size for `{prop}`: expected e.g. 512M, 80T or none"),
                );
            }
        }
        if inst.domains.is_empty() && s.archive.is_some() {
            p.key(
                &["spec", "instances", i],
                format!(
                    "instance `{i}` has no `domains`: with an archive, each instance must say which mail domains it holds (arch-restore routes by them)"
                ),
            );
        }
        for (k, d) in inst.domains.iter().enumerate() {
            let ks = k.to_string();
            let path = ["spec", "instances", i, "domains", ks.as_str()];
            if !is_domain(d) || d.to_ascii_lowercase() != *d {
                p.key(
                    &path,
                    format!("`{d}` is not a lower-case domain name (labels of a-z, 0-9, `-`)"),
                );
            }
            if let Some((other, ok)) = domains.insert(d.to_ascii_lowercase(), (i, k)) {
                let msg = if other == i {
                    format!("domain `{d}` is listed twice")
                } else {
                    format!(
                        "instances `{other}` and `{i}` both list domain `{d}`: a domain belongs to one instance only"
                    )
                };
                let oks = ok.to_string();
                p.clash(
                    &path,
                    &["spec", "instances", other, "domains", oks.as_str()],
                    msg,
                );
            }
        }
    }

    // Snapshots and replication.
    if !is_name(s.snapshots.prefix.as_str()) {
        p.value(
            &["spec", "snapshots", "prefix"],
            format!(
                "snapshot prefix `{}` is not valid: {NAME_RULE}",
                s.snapshots.prefix
            ),
        );
    }
    if s.snapshots.every.as_secs() == 0 {
        p.value(&["spec", "snapshots", "every"], "must be longer than 0s");
    }
    check_keep(&s.snapshots.keep, &["spec", "snapshots", "keep"], p);
    if let Some(k) = &s.snapshots.keep_passive {
        check_keep(k, &["spec", "snapshots", "keep_passive"], p);
    }
    if s.replication.every.as_secs() == 0 {
        p.value(&["spec", "replication", "every"], "must be longer than 0s");
    }
    if s.replication.rpo < s.snapshots.every {
        p.value(
            &["spec", "replication", "rpo"],
            format!(
                "rpo {} is shorter than snapshots.every {}: the newest replicated snapshot is older than that between two snapshots, so the RPO could never be met; make rpo at least {}",
                s.replication.rpo, s.snapshots.every, s.snapshots.every
            ),
        );
    }
    if s.replication.rpo < s.replication.every {
        p.value(
            &["spec", "replication", "rpo"],
            format!(
                "rpo {} is shorter than replication.every {}: the RPO could never be met",
                s.replication.rpo, s.replication.every
            ),
        );
    }

    // Archive.
    if let Some(a) = &s.archive {
        check_ssh(&a.ssh, &["spec", "archive", "ssh"], p);
        let ad = a.address.archive_domain().to_ascii_lowercase();
        if let Some((inst, _)) = domains.get(&ad) {
            p.value(
                &["spec", "archive", "address"],
                format!(
                    "the archive domain `{ad}` is a domain of instance `{inst}`: copies would loop back into the spool"
                ),
            );
        }
        let archive_host = normalise_host(&a.ssh.host);
        for (name, n) in &s.nodes {
            if normalise_host(&n.ssh.host) == archive_host {
                p.value(
                    &["spec", "archive", "ssh", "host"],
                    format!(
                        "the archive host `{}` is node `{name}` (`{}`): the archive must be a separate host, or a failure of that node loses both the spool and its copies",
                        a.ssh.host, n.ssh.host
                    ),
                );
            }
        }
        if a.margin.as_secs() == 0 {
            p.value(
                &["spec", "archive", "margin"],
                "must be longer than 0s: it absorbs clock differences between hosts",
            );
        }
    }

    // Fencing.
    if let Some(f) = &s.fencing {
        check_argv(
            &f.command,
            &["{node}", "{host}"],
            &["spec", "fencing", "command"],
            p,
        );
    }
    if let Some(n) = &s.notify {
        check_argv(
            &n.command,
            &["{cluster}"],
            &["spec", "notify", "command"],
            p,
        );
    }
    let mut seen = Vec::new();
    for (k, n) in s.fenced.iter().enumerate() {
        let ks = k.to_string();
        let path = ["spec", "fenced", ks.as_str()];
        if !s.nodes.contains_key(n) {
            p.key(&path, format!("fenced node `{n}` is not one of the nodes"));
        } else if *n == s.active {
            p.key(
                &path,
                format!(
                    "`{n}` is the active node and cannot be fenced: fence the old active, not the new one"
                ),
            );
        }
        if seen.contains(&n) {
            p.key(&path, format!("`{n}` is listed twice"));
        }
        seen.push(n);
    }
}

fn check_keep(k: &Keep, path: &[&str], p: &mut Problems) {
    if *k == Keep::default() {
        p.key(
            path,
            "every retention count is 0: nothing would be kept (set at least one of hourly, daily, weekly, monthly, yearly)",
        );
    }
}

fn check_ssh(ssh: &Ssh, path: &[&str], p: &mut Problems) {
    let at = |k: &'static str| {
        let mut v = path.to_vec();
        v.push(k);
        v
    };
    let h = ssh.host.as_str();
    let host_ok = !h.is_empty()
        && h.len() <= 253
        && !h.starts_with('-')
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        p.value(
            &at("host"),
            format!("`{h}` is not a host name or address (letters, digits, `.`, `-`, `:`; not starting with `-`)"),
        );
    }
    let u = ssh.user.as_str();
    let user_ok = !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !user_ok {
        p.value(&at("user"), format!("`{u}` is not a user name"));
    }
    if !(1..=65535).contains(&ssh.port) {
        p.value(
            &at("port"),
            format!("port {} is out of range 1-65535", ssh.port),
        );
    }
    if ssh.connect_timeout.is_some_and(|t| t.as_secs() == 0) {
        p.value(&at("connect_timeout"), "must be longer than 0s");
    }
    if let Some(t) = ssh
        .connect_timeout
        .filter(|t| t.as_secs() > MAX_CONNECT_TIMEOUT_SECS)
    {
        p.value(
            &at("connect_timeout"),
            format!(
                "{t} is longer than {MAX_CONNECT_TIMEOUT_SECS}s: a host that does not answer within minutes is down (and would stall every run); write at most 10m"
            ),
        );
    }
    for (k, f) in [
        ("known_hosts", &ssh.known_hosts),
        ("identity", &ssh.identity),
    ] {
        if f.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            p.value(&at(k), "must be a file path");
        }
        if f.as_ref()
            .is_some_and(|f| f.to_string_lossy().chars().any(invisible))
        {
            p.value(
                &at(k),
                "holds a control or invisible character: write the path in plain characters",
            );
        }
    }
}

fn check_argv(argv: &[String], placeholders: &[&str], path: &[&str], p: &mut Problems) {
    if argv.is_empty() || argv[0].is_empty() {
        p.key(
            path,
            "must be a non-empty argv list, e.g. [\"/usr/local/bin/tool\", \"arg\"] (never run through a shell)",
        );
        return;
    }
    for (k, a) in argv.iter().enumerate() {
        let ks = k.to_string();
        let mut at = path.to_vec();
        at.push(ks.as_str());
        if a.contains('\0') {
            p.key(&at, "argument contains a NUL byte");
        }
        let mut rest = a.as_str();
        while let Some(open) = rest.find('{') {
            let tail = &rest[open..];
            let Some(close) = tail.find('}') else { break };
            let ph = &tail[..=close];
            if !placeholders.contains(&ph) {
                p.key(
                    &at,
                    format!(
                        "unknown placeholder `{ph}`: only {} are replaced here",
                        join(placeholders.iter().copied())
                    ),
                );
            }
            rest = &tail[close + 1..];
        }
    }
}

/// The longest SSH connect timeout a spec may ask for.
const MAX_CONNECT_TIMEOUT_SECS: u64 = 600;

/// A character that must not appear in a value: control characters and the invisible ones
/// (zero-width spaces and joiners, direction marks, the BOM).
pub(super) fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}'
        )
}

/// A host as the network sees it: case, a trailing dot and IPv6 spellings do not matter.
fn normalise_host(h: &str) -> String {
    let h = h.trim().trim_end_matches('.');
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<core::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.to_ascii_lowercase(),
    }
}

fn is_property_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    if s.contains(':') {
        s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ':' | '.' | '_' | '-')
        }) && !s.starts_with(':')
    } else {
        s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }
}

fn join<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = it.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// `instances.X.mail`: the settings of an instance's own mail system only mean something with
/// `in: runtime`, and a jail's commands always run through `jexec` (no prefix of one's own).
fn check_mail(i: &str, inst: &crate::spec::Instance, p: &mut Problems) {
    use crate::spec::MailAt;
    let m = &inst.mail;
    fn at<'a>(i: &'a str, k: &'a str) -> [&'a str; 5] {
        ["spec", "instances", i, "mail", k]
    }
    let jailed = matches!(inst.runtime, Runtime::Ezjail { .. } | Runtime::Jail { .. });
    match m.at {
        MailAt::Node => {
            for (key, set) in [
                ("postfix", m.postfix.is_some()),
                ("dovecot", m.dovecot.is_some()),
                ("prefix", !m.prefix.is_empty()),
            ] {
                if set {
                    p.key(
                        &at(i, key),
                        format!(
                            "`{key}` describes the instance's own mail system: it needs `in: runtime` (with `in: node` the node's Postfix and Dovecot serve the instance)"
                        ),
                    );
                }
            }
        }
        MailAt::Runtime => {
            if jailed && !m.prefix.is_empty() {
                p.key(
                    &at(i, "prefix"),
                    "a jail's Postfix and Dovecot commands run through `jexec JAIL`: `prefix` is for `exec` runtimes",
                );
            }
            if !jailed && m.prefix.is_empty() && m.postfix.is_none() {
                p.key(
                    &at(i, "in"),
                    "`in: runtime` with an `exec` runtime needs `postfix.config_directory` (the instance's own Postfix) or a `prefix` to run its commands under",
                );
            }
            if !m.prefix.is_empty() {
                check_argv(&m.prefix, &["{instance}"], &at(i, "prefix"), p);
            }
            for (key, v) in [
                (
                    "postfix",
                    m.postfix.as_ref().map(|x| x.config_directory.as_str()),
                ),
                ("dovecot", m.dovecot.as_ref().map(|x| x.config.as_str())),
            ] {
                if let Some(v) = v
                    && (!v.starts_with('/')
                        || v.split('/').any(|c| c == "..")
                        || v.chars().any(|c| c.is_control()))
                {
                    p.value(
                        &[
                            "spec",
                            "instances",
                            i,
                            "mail",
                            key,
                            if key == "postfix" {
                                "config_directory"
                            } else {
                                "config"
                            },
                        ],
                        format!("`{v}` is not an absolute path without `..`"),
                    );
                }
            }
        }
    }
}
