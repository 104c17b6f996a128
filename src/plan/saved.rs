//! Plans saved by `plan --out` and executed by `apply --plan`, refused when the observation's
//! fingerprint changed.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::render;
use crate::model::Observation;

/// The version of the JSON plan format (`plan --output json`, `plan --out FILE`).
pub const FORMAT_VERSION: u32 = 1;

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
    let json = serde_json::to_vec(&o).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Plans serialised for `plan --out` and read back by `apply --plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub cluster: String,
    pub fingerprint: String,
    pub actions: Vec<render::JsonAction>,
    pub blocked: Vec<render::JsonBlocked>,
}
