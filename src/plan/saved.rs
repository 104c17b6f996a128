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
    Sha256::digest(bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let mut o = obs.clone();
    o.observed_at = Timestamp::UNIX_EPOCH;
    for n in o.nodes.values_mut() {
        n.capabilities.clock_offset_ms = None;
        n.capabilities.clock_uncertainty_ms = None;
    }
    if let Some(a) = o.archive.as_mut() {
        a.capabilities.clock_offset_ms = None;
        a.capabilities.clock_uncertainty_ms = None;
    }
    sha_hex(&serde_json::to_vec(&o).unwrap_or_default())
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
        let mut c = self.clone();
        c.digest.clear();
        sha_hex(&serde_json::to_vec(&c).unwrap_or_default())
    }

    /// The plan with its content digest set.
    pub fn sealed(mut self) -> SavedPlan {
        self.digest = self.content_digest();
        self
    }
}
