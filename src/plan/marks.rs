//! The durable records spoolkeeper keeps on a dataset, where any controller sees them:
//! `spoolkeeper:resync` (after a failover: the nodes that may hold writes the promoted copy
//! never received, and when the promotion happened) and `spoolkeeper:replay` (a replay of
//! the archive is owed, and from which snapshot).

use std::collections::BTreeMap;

use crate::model::Dataset;

/// The dataset property naming the nodes to resync after a failover.
pub const RESYNC_PROPERTY: &str = "spoolkeeper:resync";

/// The dataset property saying that a replay of the archive into this copy is owed, and
/// from which snapshot: set before a promoted copy is touched, cleared only once the replay
/// completed (whatever is interrupted in between, the next apply replays again).
pub const REPLAY_PROPERTY: &str = "spoolkeeper:replay";

/// Where a node named in `spoolkeeper:resync` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncPhase {
    /// Returned or not: its writes must be preserved and its copy rolled back.
    Pending,
    /// Resynced; its queued mail must still be replayed.
    Synced,
}

/// The value of `spoolkeeper:resync`: `@EPOCH:node-a,node-c=synced`. `EPOCH` is the
/// controller's time (seconds) of the failover that promoted this copy: when two copies name
/// each other (a failover, then a failover back), the newer promotion is the truth.
/// Records written before epochs existed read as epoch 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    pub epoch: i64,
    pub nodes: BTreeMap<String, ResyncPhase>,
}

impl Marks {
    /// The record on a dataset (empty when absent).
    pub fn of(d: Option<&Dataset>) -> Marks {
        d.and_then(|d| d.user_properties.get(RESYNC_PROPERTY))
            .map(|v| Marks::decode(v))
            .unwrap_or_default()
    }

    pub fn decode(v: &str) -> Marks {
        let (epoch, list) = match v.strip_prefix('@').and_then(|r| r.split_once(':')) {
            Some((e, rest)) => (e.parse().unwrap_or(0), rest),
            None => (0, v),
        };
        let nodes = list
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| match e.split_once('=') {
                Some((n, "synced")) => (n.to_string(), ResyncPhase::Synced),
                Some((n, _)) => (n.to_string(), ResyncPhase::Pending),
                None => (e.to_string(), ResyncPhase::Pending),
            })
            .collect();
        Marks { epoch, nodes }
    }

    /// The property value, `None` when nothing is left to record. A copy promoted at a known
    /// time keeps that time even when no node is left to resync (`@EPOCH:`), so that a record
    /// on another copy from an older promotion is known to be stale.
    pub fn encode(&self) -> Option<String> {
        if self.nodes.is_empty() {
            return (self.epoch > 0).then(|| format!("@{}:", self.epoch));
        }
        let list = self
            .nodes
            .iter()
            .map(|(n, p)| match p {
                ResyncPhase::Pending => n.clone(),
                ResyncPhase::Synced => format!("{n}=synced"),
            })
            .collect::<Vec<_>>()
            .join(",");
        Some(if self.epoch > 0 {
            format!("@{}:{list}", self.epoch)
        } else {
            list
        })
    }

    pub fn phase(&self, node: &str) -> Option<ResyncPhase> {
        self.nodes.get(node).copied()
    }

    /// Does this record (on a copy promoted at `self.epoch`) still hold against the copy it
    /// names, whose own record is `theirs`? Not when that copy was promoted later. Two
    /// promotions dated in the same second (each failover made while the other copy was out
    /// of sight) are told apart by the spec: the copy on its active node (`mine_is_active`),
    /// the operator's latest decision, holds; the other's record does not. Legacy records
    /// (no epoch on either side) hold, as before epochs existed.
    pub fn holds_against(&self, theirs: &Marks, mine_is_active: bool) -> bool {
        if self.epoch == theirs.epoch && self.epoch > 0 {
            return mine_is_active;
        }
        self.epoch >= theirs.epoch
    }
}

/// The snapshot a replay owed to this copy starts from (`Some("")` when owed with no
/// snapshot known: every held copy, recorded as [`EVERY_HELD_COPY`]).
pub fn owed_replay(d: Option<&Dataset>) -> Option<String> {
    d.and_then(|d| d.user_properties.get(REPLAY_PROPERTY))
        .map(|v| {
            if v == EVERY_HELD_COPY {
                String::new()
            } else {
                v.clone()
            }
        })
}

/// The value recorded for a replay owed from `anchor` (`""`: every held copy).
pub fn encode_replay(anchor: &str) -> String {
    if anchor.is_empty() {
        EVERY_HELD_COPY.to_owned()
    } else {
        anchor.to_owned()
    }
}

/// The recorded value of a replay owed with no snapshot window: every held copy (a user
/// property is never set to an empty string).
pub const EVERY_HELD_COPY: &str = "*";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_legacy_ones_read_as_epoch_zero() {
        let m = Marks::decode("@1764489600:node-a,node-c=synced");
        assert_eq!(m.epoch, 1764489600);
        assert_eq!(m.phase("node-a"), Some(ResyncPhase::Pending));
        assert_eq!(m.phase("node-c"), Some(ResyncPhase::Synced));
        assert_eq!(Marks::decode(&m.encode().unwrap()), m);
        let legacy = Marks::decode("node-b,node-c=synced");
        assert_eq!(legacy.epoch, 0);
        assert_eq!(legacy.encode().as_deref(), Some("node-b,node-c=synced"));
        assert_eq!(Marks::default().encode(), None);
        let promoted = Marks {
            epoch: 42,
            nodes: Default::default(),
        };
        assert_eq!(promoted.encode().as_deref(), Some("@42:"));
        assert_eq!(Marks::decode("@42:"), promoted);
    }

    #[test]
    fn the_newer_promotion_wins() {
        let old = Marks::decode("@100:node-a");
        let new = Marks::decode("@200:node-b");
        for active in [false, true] {
            assert!(new.holds_against(&old, active));
            assert!(!old.holds_against(&new, active));
        }
        // legacy records on both sides: as before (the record holds)
        assert!(Marks::decode("node-a").holds_against(&Marks::default(), false));
        // two promotions in the same second: the spec's active copy holds, the other does not
        let a = Marks::decode("@300:node-b");
        let b = Marks::decode("@300:node-a");
        assert!(a.holds_against(&b, true) && !b.holds_against(&a, false));
    }
}
