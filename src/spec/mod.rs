//! Spec v1: the operator's declaration of a spool cluster, and its loader.
//!
//! Loading is strict and explains itself: every problem comes back as a [`Diagnostic`]
//! naming the file, line and column, and all semantic problems of a file are reported at
//! once. A [`Spec`] value exists only after validation passed, so the rest of the program
//! never sees an invalid one. Nothing here touches a host.

mod address;
mod index;
mod units;
mod validate;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use crate::decide::retention::Keep;
pub use address::{AddressError, AddressTemplate, is_domain};
pub use index::Pos;
pub use units::{Duration, Size, UnitError};
pub(crate) use validate::SIZE_PROPERTIES;

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "spoolkeeper/v1";
/// The only `kind` this build reads.
pub const KIND: &str = "SpoolCluster";
/// Larger files are refused before parsing: a spec is a few kilobytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $schema:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $t(String);

        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Build from a string checked by [`is_name`]; `None` otherwise.
            pub fn new(s: &str) -> Option<Self> {
                is_name(s).then(|| Self(s.to_owned()))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($schema)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": NAME_PATTERN,
                    "maxLength": 63,
                })
            }
        }
    };
}

/// The JSON Schema pattern of a name.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$";

/// At most 63 characters of `[a-z0-9]` with inner `-` or `_`: safe as a ZFS component, a
/// jail name and a shell word, so nothing a spec names can ever need quoting.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

name_type!(
    /// A cluster's name (`metadata.name`).
    ClusterName,
    "ClusterName"
);
name_type!(
    /// A node's name: a key of `spec.nodes`.
    NodeName,
    "NodeName"
);
name_type!(
    /// An instance's name: a key of `spec.instances`.
    InstanceName,
    "InstanceName"
);
name_type!(
    /// A name used as-is on a host: ZFS pool, jail, snapshot prefix.
    Name,
    "Name"
);

/// A dataset path relative to a node's pool: names joined by `/`, e.g. `imap/students`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatasetPath(String);

impl DatasetPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn new(s: &str) -> Option<Self> {
        is_dataset_path(s).then(|| Self(s.to_owned()))
    }
}

impl fmt::Display for DatasetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names joined by `/`, each checked by [`is_name`].
pub fn is_dataset_path(s: &str) -> bool {
    s.split('/').all(is_name)
}

impl JsonSchema for DatasetPath {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("DatasetPath")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?(/[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?)*$",
            "description": "A dataset path relative to each node's pool, e.g. imap/students.",
        })
    }
}

/// A whole spec file: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "spoolkeeper SpoolCluster (spec v1)")]
pub struct Document {
    /// Always `spoolkeeper/v1`.
    #[schemars(extend("const" = "spoolkeeper/v1"))]
    pub api_version: String,
    /// Always `SpoolCluster`.
    #[schemars(extend("const" = "SpoolCluster"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The cluster's name; unique among the specs a controller reads.
    pub name: ClusterName,
}

/// The desired state of one spool cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// THE failover switch: the node that serves every instance. Change it, commit, apply.
    pub active: NodeName,
    /// The nodes that can run the instances (at least two).
    pub nodes: BTreeMap<NodeName, Node>,
    /// The IMAP instances: one dataset and one jail each.
    pub instances: BTreeMap<InstanceName, Instance>,
    pub snapshots: Snapshots,
    pub replication: Replication,
    /// The archive host keeping BCC copies on hold between replications (PDMA = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archive>,
    /// How to fence a node that must never serve again until reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<Fencing>,
    /// Nodes the operator attests are down and will not serve (manual fencing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<NodeName>,
    /// Where the controller reports events an operator must act on (the active node
    /// unreachable, a blocked plan, a failing reconcile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub ssh: Ssh,
    /// The ZFS pool holding the instance datasets on this node.
    pub pool: Name,
}

/// How to reach a host over SSH. Host keys are always checked strictly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Host name or address.
    pub host: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// A known_hosts file to check the host key against (default: the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// A private key file (default: the SSH agent and the user's keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// How long to wait for the connection (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
}

fn default_user() -> String {
    "root".to_owned()
}
fn default_port() -> u32 {
    22
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// The instance's dataset, relative to each node's pool.
    pub dataset: DatasetPath,
    /// How the instance's jail is started, stopped and asked for its state.
    pub runtime: Runtime,
    /// ZFS properties kept on the dataset (e.g. `compression: lz4`, `quota: 80T`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertyValue>,
    /// The mail domains this instance holds; a domain belongs to one instance only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// How `spoolkeeper drill` rehearses a failover of this instance on a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
    /// Where the MTA that accepts this instance's mail (and so sends its archive BCC) and its
    /// mail store run: the node's own Postfix and Dovecot (default), or the instance's.
    #[serde(default, skip_serializing_if = "Mail::is_node")]
    pub mail: Mail,
}

/// Where an instance's Postfix and Dovecot run (`instances.X.mail`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mail {
    /// `node` (default): the node's Postfix and Dovecot serve every instance of the node.
    /// `runtime`: the instance has its own. For `ezjail`/`jail` runtimes every Postfix and
    /// Dovecot command runs through `jexec JAIL`; for `exec`, through `prefix` and/or with
    /// the instance's own `config_directory` (Postfix multi-instance: `postconf -c DIR`).
    #[serde(rename = "in", default)]
    pub at: MailAt,
    /// The instance's own Postfix (multi-instance): its configuration directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postfix: Option<PostfixInstance>,
    /// The instance's own Dovecot: its configuration file (`doveadm -c FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dovecot: Option<DovecotInstance>,
    /// For an `exec` runtime: an argv every Postfix and Dovecot command of the instance is
    /// run under (e.g. `[chroot, /srv/students]`); `{instance}` is replaced in whole arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<String>,
}

impl Mail {
    /// The default: the node's Postfix and Dovecot.
    pub fn is_node(&self) -> bool {
        self.at == MailAt::Node
    }
}

/// `instances.X.mail.in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MailAt {
    /// The node's Postfix and Dovecot.
    #[default]
    Node,
    /// The instance's own, inside its runtime.
    Runtime,
}

/// An instance's own Postfix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostfixInstance {
    /// Its `config_directory` (`/etc/postfix-students`): passed as `-c` to `postconf`,
    /// `postqueue`, `postsuper`, `postcat`, `postfix` and as `-C` to `sendmail`.
    pub config_directory: String,
}

/// An instance's own Dovecot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DovecotInstance {
    /// Its configuration file, passed as `doveadm -c FILE`.
    pub config: String,
}

/// A throwaway copy of an instance for a failover drill: its own start/stop argv, listeners
/// on the node that production mail never reaches, and the mailboxes that prove it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Where the drill clone is mounted on the node; the drill instance serves the mail there.
    pub mountpoint: String,
    /// Start the drill instance on the mounted clone. `{instance}`, `{node}` and
    /// `{mountpoint}` are replaced in whole arguments.
    pub start: Vec<String>,
    /// Stop it (the clone is destroyed right after).
    pub stop: Vec<String>,
    /// The drill instance's IMAP listener as the node sees it (`127.0.0.1:10143`): reached
    /// through the SSH connection, never exposed to users.
    pub imap: String,
    /// Its LMTP listener, where the held archive copies are delivered.
    pub lmtp: String,
    /// Mailboxes that log in over IMAP and whose messages are checked.
    pub probes: Vec<String>,
    /// The IMAP login of a probe: `{user}` is replaced (`{user}*drillmaster` for a Dovecot
    /// master user).
    #[serde(default = "default_drill_login")]
    pub login: String,
    /// A file on the machine running spoolkeeper whose first line is the probes' password.
    pub password_file: String,
    /// `check` warns when no drill of this instance passed for this long.
    #[serde(default = "default_drill_warn_after")]
    pub warn_after: Duration,
}

fn default_drill_login() -> String {
    "{user}".into()
}
fn default_drill_warn_after() -> Duration {
    Duration::from_secs(7 * 86_400)
}

/// A ZFS property value as written in the spec (`lz4`, `80T`, `on`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PropertyValue(pub String);

impl Serialize for PropertyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::ScalarText::deserialize(d).map(|t| PropertyValue(t.0))
    }
}
impl JsonSchema for PropertyValue {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("PropertyValue")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "integer", "boolean"] })
    }
}

/// The jail runtime of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Runtime {
    /// An ezjail jail: `ezjail-admin onestart|onestop JAIL`, state from `ezjail-admin list`.
    Ezjail { jail: Name },
    /// A jail(8) jail: `jail -c|-r JAIL`, state from `jls`.
    Jail { jail: Name },
    /// Any service manager: three argv lists. `{instance}` and `{node}` are replaced in
    /// whole arguments; `status` exits 0 when running and 3 when stopped (LSB).
    Exec {
        start: Vec<String>,
        stop: Vec<String>,
        status: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshots {
    /// Only snapshots named `<prefix>_…` are spoolkeeper's, and only those are ever pruned.
    pub prefix: Name,
    /// Take a snapshot of the active datasets when this much time has passed since the last.
    pub every: Duration,
    /// Retention on the active node (and on the passive unless `keep_passive` says otherwise).
    pub keep: Keep,
    /// A longer retention for the passive node's replica, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_passive: Option<Keep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// Replicate the active datasets to the passive node this often.
    pub every: Duration,
    /// The recovery point objective: `status` and `check` warn past it, go critical past 2x.
    pub rpo: Duration,
    #[serde(default)]
    pub transport: Transport,
    /// Compress the stream on the wire: `auto` (default) uses zstd where both ends have it,
    /// else lz4 where both have that, else nothing; `zstd`, `lz4` ask for one (nothing
    /// where an end lacks it); `none` never compresses (a fast link, or slow CPUs).
    #[serde(default)]
    pub compress: Compress,
}

/// Stream compression of a replication (the `replication.compress` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    /// zstd where both ends have it, else lz4, else none.
    #[default]
    Auto,
    Zstd,
    Lz4,
    None,
}

/// How the replication stream travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The active node pushes to the passive over SSH (the fast path).
    #[default]
    Direct,
    /// The stream flows through the controller: nodes need not trust each other.
    Relay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    pub ssh: Ssh,
    /// The BCC rewrite of each recipient; reversible.
    pub address: AddressTemplate,
    /// Safety margin around the watermark (default 10m).
    #[serde(default = "default_margin")]
    pub margin: Duration,
}

fn default_margin() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fencing {
    /// An argv run by the controller to fence a node; `{node}` is replaced by the node name
    /// and `{host}` by its SSH host in whole arguments. Never passed to a shell.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// An argv the controller runs for each event, with the event as one JSON object on its
    /// stdin (`{cluster}` is replaced in whole arguments). Never passed to a shell; it has
    /// 30 s to finish.
    pub command: Vec<String>,
}

/// A validated cluster spec and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub file: PathBuf,
    pub name: ClusterName,
    pub spec: ClusterSpec,
}

impl Spec {
    /// The document this spec was loaded from (for printing and round trips).
    pub fn document(&self) -> Document {
        Document {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: self.name.clone(),
            },
            spec: self.spec.clone(),
        }
    }
}

/// One problem in a spec file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    /// The offending source line, for a caret display.
    pub line_text: Option<String>,
}

/// A text as a terminal may show it: control and invisible characters (an escape sequence, a
/// carriage return, a zero-width space from the spec) escaped, never echoed raw. A tab stays.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c != '\t' && validate::invisible(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            printable(&self.file.display().to_string()),
            self.pos.line,
            self.pos.col,
            printable(&self.message)
        )?;
        if let Some(line) = &self.line_text {
            let pad: String = line
                .chars()
                .take(self.pos.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n    | {}\n    | {pad}^", printable(line))?;
        }
        Ok(())
    }
}

/// Every problem found in one load; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<Diagnostic>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

fn diag(file: &Path, text: Option<&str>, pos: Pos, message: impl Into<String>) -> Diagnostic {
    let line_text = text.and_then(|t| {
        t.lines()
            .nth(pos.line.saturating_sub(1))
            .map(|l| l.chars().take(160).collect())
    });
    Diagnostic {
        file: file.to_owned(),
        pos,
        message: message.into(),
        line_text,
    }
}

/// Parse and validate one spec from bytes. `file` is only used in messages.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Spec, SpecErrors> {
    let one = |pos, m: String| SpecErrors(vec![diag(file, None, pos, m)]);
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(one(
            Pos { line: 1, col: 1 },
            format!(
                "file is {} bytes; a spec is at most {MAX_SPEC_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            return Err(one(
                Pos { line, col },
                "not valid UTF-8: a spec is a UTF-8 YAML file".into(),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(one(
            Pos { line: 1, col: 1 },
            format!("empty file: expected a spec starting with `apiVersion: {API_VERSION}`"),
        ));
    }
    let idx = index::Index::build(text)
        .map_err(|e| SpecErrors(vec![diag(file, Some(text), e.pos, e.message)]))?;
    let doc: Document = yaml_serde::from_str(text).map_err(|e| {
        let pos = e.location().map_or(Pos { line: 1, col: 1 }, |l| Pos {
            line: l.line(),
            col: l.column(),
        });
        let message = serde_message(&e);
        let pos = refine_position(&idx, &message).unwrap_or(pos);
        SpecErrors(vec![diag(file, Some(text), pos, message)])
    })?;
    let problems = validate::check(&doc);
    if !problems.is_empty() {
        let mut diags: Vec<Diagnostic> = problems
            .into_iter()
            .map(|p| {
                let path: Vec<&str> = p.path.iter().map(String::as_str).collect();
                let mut pos = if p.at_value {
                    idx.value(&path)
                } else {
                    idx.key(&path)
                };
                if let Some(other) = &p.other {
                    let other: Vec<&str> = other.iter().map(String::as_str).collect();
                    pos = pos.max(if p.at_value {
                        idx.value(&other)
                    } else {
                        idx.key(&other)
                    });
                }
                diag(file, Some(text), pos, p.message)
            })
            .collect();
        diags.sort_by_key(|d| d.pos);
        return Err(SpecErrors(diags));
    }
    Ok(Spec {
        file: file.to_owned(),
        name: doc.metadata.name,
        spec: doc.spec,
    })
}

/// serde reports some errors at the start of the enclosing mapping (custom value errors,
/// internally tagged enums). The message names the path and quotes the culprit: point at it.
fn refine_position(idx: &index::Index, message: &str) -> Option<Pos> {
    let (path, rest) = message.split_once(": ")?;
    if path.contains(' ') {
        return None;
    }
    let path: Vec<String> = path.split('.').map(str::to_owned).collect();
    let quoted = rest.split('`').nth(1)?;
    if rest.starts_with("unknown field") {
        return idx.key_under(&path, quoted);
    }
    idx.scalar_under(&path, quoted)
}

/// yaml_serde's message without its trailing " at line L column C" (we print our own).
fn serde_message(e: &yaml_serde::Error) -> String {
    let m = e.to_string();
    let m = match m.rfind(" at line ") {
        Some(i) => m[..i].to_owned(),
        None => m,
    };
    // "spec.nodes: unknown field `x`, expected ..." is already a good sentence; point to
    // the durations' accepted forms when a unit failed.
    m.replace("invalid type: ", "wrong type: ")
}

/// A problem with a whole file (it cannot be read, a directory without specs), at 1:1.
pub fn file_error(path: &Path, message: impl Into<String>) -> Diagnostic {
    diag(path, None, Pos { line: 1, col: 1 }, message)
}

/// Parse the files read together (one cluster per file): every problem of every file, and
/// cluster names unique across them. A file that could not be read is its error.
pub fn parse_files(
    files: Vec<(PathBuf, Result<Vec<u8>, String>)>,
) -> Result<Vec<Spec>, SpecErrors> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (f, bytes) in files {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                errors.push(file_error(&f, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse(&f, &bytes) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e.0),
        }
    }
    // Cluster names must be unique across the files read together.
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for s in &specs {
        if let Some(first) = seen.insert(s.name.as_str(), &s.file) {
            errors.push(file_error(
                &s.file,
                format!(
                    "cluster name `{}` is already used by {}",
                    s.name,
                    first.display()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(SpecErrors(errors))
    }
}

/// The JSON Schema (draft-07) of a spec file, for editors (yaml-language-server).
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<Document>();
    schema.to_value()
}

/// A spec document as YAML text (what `parse` reads back to an equal document).
pub fn to_yaml(doc: &Document) -> Result<String, yaml_serde::Error> {
    yaml_serde::to_string(doc)
}
