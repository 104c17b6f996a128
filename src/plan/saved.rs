//! Plans saved by `plan --out` and executed by `apply --plan`. A saved plan carries the
//! observation's fingerprint, the digest of the spec it was made from, every action's exact
//! commands, and a digest over all of it: `apply --plan` runs exactly those commands or
//! refuses (the hosts changed, the spec changed, the file was edited, a safety rule fires).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::render;
use crate::model::Observation;
use crate::spec::Spec;

/// The version of the JSON plan format (`plan --output json`, `plan --out FILE`).
pub const FORMAT_VERSION: u32 = 1;

fn sha_hex(bytes: &[u8]) -> String {
    hex16(&Sha256::digest(bytes))
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Feeds what serde_json writes straight into the hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`sha_hex`] of a value's JSON, without the JSON ever held in memory.
fn sha_of(v: &impl Serialize) -> String {
    let mut h = HashWriter(Sha256::new());
    // serialising plain data into a writer that never fails cannot fail
    let _ = serde_json::to_writer(&mut h, v);
    hex16(&h.0.finalize())
}

/// The digest of a spec as it was parsed (the cluster name and everything under `spec:`):
/// two specs with the same digest make the same plans from the same observation.
pub fn spec_digest(spec: &Spec) -> String {
    let json = serde_json::to_vec(&(spec.name.as_str(), &spec.spec)).unwrap_or_default();
    sha_hex(&json)
}

/// The fingerprint of an observation: what `apply --plan` compares to refuse a stale plan.
/// Times of the observation itself and clock measurements are left out (they change on
/// every run without changing the world); everything else counts.
pub fn fingerprint(obs: &Observation) -> String {
    // The observation's JSON with those fields cleared, hashed as it is written: neither a
    // copy of the observation nor its text is ever held (the archive's hold queue can be a
    // million entries). Field for field the JSON of `Observation`.
    #[derive(Serialize)]
    struct ArchiveView<'a> {
        reachability: &'a crate::model::Reachability,
        capabilities: crate::model::Capabilities,
        postfix: &'a Option<crate::model::PostfixObservation>,
        errors: &'a [String],
    }
    #[derive(Serialize)]
    struct View<'a> {
        observed_at: Timestamp,
        nodes: std::collections::BTreeMap<&'a str, crate::model::NodeObservation>,
        archive: Option<ArchiveView<'a>>,
    }
    let quiet = |c: &crate::model::Capabilities| crate::model::Capabilities {
        clock_offset_ms: None,
        clock_uncertainty_ms: None,
        ..c.clone()
    };
    let view = View {
        observed_at: Timestamp::UNIX_EPOCH,
        nodes: obs
            .nodes
            .iter()
            .map(|(k, n)| {
                let mut n = n.clone();
                n.capabilities = quiet(&n.capabilities);
                (k.as_str(), n)
            })
            .collect(),
        archive: obs.archive.as_ref().map(|a| ArchiveView {
            reachability: &a.reachability,
            capabilities: quiet(&a.capabilities),
            postfix: &a.postfix,
            errors: &a.errors,
        }),
    };
    sha_of(&view)
}

/// Plans serialised for `plan --out` and read back by `apply --plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub cluster: String,
    pub fingerprint: String,
    pub actions: Vec<render::JsonAction>,
    pub blocked: Vec<render::JsonBlocked>,
    /// [`spec_digest`](crate::plan::spec_digest) of the spec the plan was made from.
    #[serde(default)]
    pub spec_digest: String,
    /// The digest of everything above ([`SavedPlan::content_digest`]): an edited file is
    /// refused.
    #[serde(default)]
    pub digest: String,
}

impl SavedPlan {
    /// The digest of the plan's content (every field but `digest`).
    pub fn content_digest(&self) -> String {
        // field for field the JSON of `SavedPlan` with an empty digest, hashed as written
        #[derive(Serialize)]
        struct View<'a> {
            format_version: u32,
            cluster: &'a str,
            fingerprint: &'a str,
            actions: &'a [render::JsonAction],
            blocked: &'a [render::JsonBlocked],
            spec_digest: &'a str,
            digest: &'a str,
        }
        sha_of(&View {
            format_version: self.format_version,
            cluster: &self.cluster,
            fingerprint: &self.fingerprint,
            actions: &self.actions,
            blocked: &self.blocked,
            spec_digest: &self.spec_digest,
            digest: "",
        })
    }

    /// The plan with its content digest set.
    pub fn sealed(mut self) -> SavedPlan {
        self.digest = self.content_digest();
        self
    }
}
