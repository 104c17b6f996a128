//! Snapshot naming, "is a snapshot due", retention and batched destroy planning.
//!
//! Everything here is a pure function: snapshots and the current time in, a decision out.
//! No ZFS call, no clock read, no logging. The planner feeds observed snapshots in and turns
//! the decision into actions; the tests are tables of dates in, names out (the shape of
//! zrepl's `internal/pruning`, written for our own rules).
//!
//! # Ownership
//!
//! A snapshot is spoolkeeper's only when its name is exactly `<prefix>_<YYYYMMDD>T<HHMMSS>Z`
//! (UTC, e.g. `sk_20261128T180000Z`). Anything else (`sk2_…`, `sk_garbage`, `autosnap_…`, a
//! snapshot an operator took by hand) is never pruned: guarantee 4 of docs/DOMAIN.md, "nothing
//! destroyed without cause". The timestamp form sorts lexically in time order and has a single
//! spelling per instant, so a name cannot be read two ways.
//!
//! # Retention semantics, and how they differ from sanoid
//!
//! `keep: {hourly: H, daily: D, weekly: W, monthly: M, yearly: Y}` keeps, for each rule, the
//! newest owned snapshot of each of the last N *calendar buckets* counted back from `now`
//! (UTC hours, UTC days, ISO weeks starting Monday, calendar months, calendar years; the bucket
//! containing `now` is the first one). A bucket with no snapshot still counts as one of the N:
//! the policy is a window of time, not a number of snapshots. A snapshot kept by any rule stays.
//!
//! sanoid instead counts N snapshots per type: `daily = 30` keeps the 30 newest snapshots it
//! took as "daily", whenever they were taken. The difference shows after an outage. Say the
//! host was down from the 1st to the 20th of a month, and `daily: 30`, on the 30th:
//!
//! * spoolkeeper keeps one snapshot for each of the last 30 days that has one: the 10 days since
//!   the 20th plus the days before the 1st that fall in the window. The window never reaches back
//!   further than 30 days, so what an operator can restore "from last month" is exactly what the
//!   spec says, and disk use is bounded by time.
//! * sanoid keeps 30 daily snapshots, so it reaches back about 50 days to find 30 of them.
//!
//! Neither is wrong; ours makes the restore horizon a property of the spec ("one year" means one
//! year) and keeps retention independent of how many snapshots happened to be taken. It also
//! means snapshots are taken with one name and one schedule (`snapshots.every`) and classified at
//! prune time, instead of one snapshot per type.
//!
//! # Never pruned, whatever the rules say
//!
//! The newest owned snapshot (so there is always a recent restore point and a base to send
//! from), anything with a hold (`userrefs > 0`), anything in `protected` (the replication base),
//! anything not ours, and anything whose `creation` is after `now` (a clock problem: we do not
//! decide about what we cannot place in time).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;
use serde::{Deserialize, Serialize};

use crate::model::Snapshot;

/// Length of the timestamp part of an owned name: `YYYYMMDDTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// The name spoolkeeper gives a snapshot taken at `at`: `<prefix>_<YYYYMMDD>T<HHMMSS>Z`, UTC,
/// whole seconds (sub-seconds are dropped).
///
/// Why this form: it sorts lexically in time order, it has exactly one spelling per second
/// (so [`parse_owned`] can be strict), and it contains only characters valid in every ZFS
/// implementation (no `:` that some tools mangle). Round-trips through [`parse_owned`] for years
/// 0000 to 9999.
pub fn snapshot_name(prefix: &str, at: Timestamp) -> String {
    format!("{prefix}_{}", format_stamp(at))
}

fn format_stamp(at: Timestamp) -> String {
    let dt = Offset::UTC.to_datetime(at);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// The instant encoded in `name` when the snapshot is ours (exactly `<prefix>_` followed by a
/// valid `YYYYMMDDTHHMMSSZ`), else `None`.
///
/// Strict on purpose: ownership is what allows destruction, so `sk2_…`, `skx`, `sk_garbage`,
/// `sk_20261128T180000Z.bak`, an impossible date (`…0230T…`) or a leap second are not ours.
pub fn parse_owned(prefix: &str, name: &str) -> Option<Timestamp> {
    let stamp = name.strip_prefix(prefix)?.strip_prefix('_')?;
    let b = stamp.as_bytes();
    if b.len() != STAMP_LEN || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i32> {
        let mut value = 0i32;
        for &c in b.get(range)? {
            if !c.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i32::from(c - b'0');
        }
        Some(value)
    };
    let year = i16::try_from(digits(0..4)?).ok()?;
    let month = i8::try_from(digits(4..6)?).ok()?;
    let day = i8::try_from(digits(6..8)?).ok()?;
    let hour = i8::try_from(digits(9..11)?).ok()?;
    let minute = i8::try_from(digits(11..13)?).ok()?;
    let second = i8::try_from(digits(13..15)?).ok()?;
    let dt = DateTime::new(year, month, day, hour, minute, second, 0).ok()?;
    Offset::UTC.to_timestamp(dt).ok()
}

/// Whether a new snapshot should be taken now: there is no owned snapshot, or `every` has
/// elapsed since the newest one.
///
/// The instant compared is the one in the snapshot's *name*, not its `creation`: the name was
/// written from the controller's clock, the same clock `now` comes from, so a host clock offset
/// cannot cause a burst of snapshots or a stall. An owned name dated after `now` counts as
/// recent (not due): the controller's clock went backwards, and taking a snapshot whose name
/// sorts before an existing one would break the naming order; the clock catching up resolves it.
pub fn snapshot_due(
    prefix: &str,
    every: std::time::Duration,
    snapshots: &[Snapshot],
    now: Timestamp,
) -> bool {
    let newest = snapshots
        .iter()
        .filter_map(|s| parse_owned(prefix, &s.name))
        .max();
    match newest {
        None => true,
        Some(newest) => {
            let elapsed = now.duration_since(newest);
            match jiff::SignedDuration::try_from(every) {
                Ok(every) => elapsed >= every,
                // `every` larger than any representable span: never elapsed.
                Err(_) => false,
            }
        }
    }
}

/// Age order of snapshots of one dataset, oldest first: by `createtxg` (the host's own
/// sequence, immune to clock jumps), then `creation`, then name so the order is total.
///
/// Snapshots without `createtxg` sort before those with one; a host either reports it for all
/// of its snapshots or for none, so this only makes the order total.
pub fn age_order(a: &Snapshot, b: &Snapshot) -> Ordering {
    (a.createtxg, a.creation, &a.name, a.guid).cmp(&(b.createtxg, b.creation, &b.name, b.guid))
}

/// How many of each calendar bucket to keep. Zero disables a rule. Buckets are counted back
/// from `now` and a bucket without a snapshot still counts (see the module documentation for
/// the comparison with sanoid).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct Keep {
    /// The newest snapshot of each of the last N UTC hours.
    pub hourly: u32,
    /// The newest snapshot of each of the last N UTC days.
    pub daily: u32,
    /// The newest snapshot of each of the last N ISO weeks (Monday to Sunday, UTC).
    pub weekly: u32,
    /// The newest snapshot of each of the last N calendar months (UTC).
    pub monthly: u32,
    /// The newest snapshot of each of the last N calendar years (UTC).
    pub yearly: u32,
}

/// A snapshot named for protection: by guid (what survives a send/receive) or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotRef {
    Guid(u64),
    Name(String),
}

impl SnapshotRef {
    pub fn matches(&self, s: &Snapshot) -> bool {
        match self {
            SnapshotRef::Guid(g) => s.guid == *g,
            SnapshotRef::Name(n) => s.name == *n,
        }
    }
}

/// One retention rule of [`Keep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    const ALL: [Rule; 5] = [
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
    ];

    fn count(self, keep: &Keep) -> u32 {
        match self {
            Rule::Hourly => keep.hourly,
            Rule::Daily => keep.daily,
            Rule::Weekly => keep.weekly,
            Rule::Monthly => keep.monthly,
            Rule::Yearly => keep.yearly,
        }
    }

    /// A sequence number of the bucket holding `t`: consecutive buckets have consecutive
    /// numbers, so "the last N buckets" is "index within N of now's index".
    fn bucket_index(self, t: Timestamp) -> i64 {
        let secs = t.as_second();
        match self {
            Rule::Hourly => secs.div_euclid(3600),
            Rule::Daily => secs.div_euclid(86_400),
            // 1970-01-01 was a Thursday: shifting by 3 days puts Mondays on multiples of 7.
            Rule::Weekly => (secs.div_euclid(86_400) + 3).div_euclid(7),
            Rule::Monthly => {
                let d = Offset::UTC.to_datetime(t);
                i64::from(d.year()) * 12 + i64::from(d.month()) - 1
            }
            Rule::Yearly => i64::from(Offset::UTC.to_datetime(t).year()),
        }
    }

    /// A human label of the bucket holding `t`, for plans and logs.
    fn bucket_label(self, t: Timestamp) -> String {
        let d = Offset::UTC.to_datetime(t);
        match self {
            Rule::Hourly => format!(
                "{:04}-{:02}-{:02}T{:02}Z",
                d.year(),
                d.month(),
                d.day(),
                d.hour()
            ),
            Rule::Daily => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            Rule::Weekly => {
                let w = d.date().iso_week_date();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Rule::Monthly => format!("{:04}-{:02}", d.year(), d.month()),
            Rule::Yearly => format!("{:04}", d.year()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        })
    }
}

/// Why a snapshot survives. A snapshot may have several reasons; all are listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KeepReason {
    /// Its name does not match the prefix and timestamp form: not ours, never touched.
    NotOwned,
    /// Its creation is after `now`: a clock problem, we do not decide.
    Future,
    /// It has holds (`userrefs`).
    Held { userrefs: u32 },
    /// Listed as protected (the replication base).
    Protected,
    /// The newest owned snapshot.
    Newest,
    /// The newest snapshot of a bucket a rule keeps.
    Rule { rule: Rule, bucket: String },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotOwned => f.write_str("not ours (prefix/name form)"),
            KeepReason::Future => f.write_str("created in the future (clock skew?)"),
            KeepReason::Held { userrefs } => write!(f, "held ({userrefs} hold(s))"),
            KeepReason::Protected => f.write_str("replication base"),
            KeepReason::Newest => f.write_str("newest"),
            KeepReason::Rule { rule, bucket } => write!(f, "{rule} {bucket}"),
        }
    }
}

/// A surviving snapshot and every reason it survives (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub snapshot: Snapshot,
    pub reasons: Vec<KeepReason>,
}

/// The outcome of [`prune`]: what to destroy and, for every other snapshot, why it stays.
/// Both lists are in age order, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneDecision {
    /// Owned snapshots that no rule keeps and no safety rule protects.
    pub destroy: Vec<Snapshot>,
    pub keep: Vec<Kept>,
}

impl PruneDecision {
    /// Names to destroy, oldest first.
    pub fn destroy_names(&self) -> Vec<String> {
        self.destroy.iter().map(|s| s.name.clone()).collect()
    }
}

impl fmt::Display for PruneDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.keep {
            write!(f, "keep    {} (", k.snapshot.name)?;
            for (i, r) in k.reasons.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{r}")?;
            }
            f.write_str(")\n")?;
        }
        for d in &self.destroy {
            writeln!(
                f,
                "destroy {} (owned, not the newest of any kept bucket)",
                d.name
            )?;
        }
        Ok(())
    }
}

/// Decide which snapshots of one dataset to destroy under `keep`, and why each other one stays.
///
/// `snapshots` are the dataset's snapshots as observed (any order, any owner); `protected`
/// names snapshots that must stay whatever the rules say (the replication base, by guid). See
/// the module documentation for the bucket semantics. Pruning is idempotent: pruning the
/// survivors again with the same `now` destroys nothing, because every bucket's newest
/// snapshot is itself a survivor.
pub fn prune(
    keep: &Keep,
    prefix: &str,
    snapshots: &[Snapshot],
    protected: &[SnapshotRef],
    now: Timestamp,
) -> PruneDecision {
    let mut sorted: Vec<&Snapshot> = snapshots.iter().collect();
    sorted.sort_by(|a, b| age_order(a, b));

    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];
    // Indices (into `sorted`) of owned snapshots the rules may decide about, oldest first.
    let mut candidates: Vec<usize> = Vec::new();

    for (i, s) in sorted.iter().enumerate() {
        let r = &mut reasons[i];
        let owned = parse_owned(prefix, &s.name).is_some();
        if !owned {
            r.push(KeepReason::NotOwned);
        }
        let future = s.creation > now;
        if future {
            r.push(KeepReason::Future);
        }
        if s.userrefs > 0 {
            r.push(KeepReason::Held {
                userrefs: s.userrefs,
            });
        }
        if protected.iter().any(|p| p.matches(s)) {
            r.push(KeepReason::Protected);
        }
        if owned && !future {
            candidates.push(i);
        }
    }

    if let Some(&newest) = candidates.last() {
        reasons[newest].push(KeepReason::Newest);
    }

    for rule in Rule::ALL {
        let n = i64::from(rule.count(keep));
        if n == 0 {
            continue;
        }
        let current = rule.bucket_index(now);
        // bucket index -> newest candidate in it; candidates are oldest first, so the last
        // write wins.
        let mut newest_in: BTreeMap<i64, usize> = BTreeMap::new();
        for &i in &candidates {
            let b = rule.bucket_index(sorted[i].creation);
            // `creation <= now` for candidates, so `current - b >= 0`.
            if current - b < n {
                newest_in.insert(b, i);
            }
        }
        for &i in newest_in.values() {
            reasons[i].push(KeepReason::Rule {
                rule,
                bucket: rule.bucket_label(sorted[i].creation),
            });
        }
    }

    let mut decision = PruneDecision::default();
    for (s, r) in sorted.into_iter().zip(reasons) {
        if r.is_empty() {
            decision.destroy.push(s.clone());
        } else {
            decision.keep.push(Kept {
                snapshot: s.clone(),
                reasons: r,
            });
        }
    }
    decision
}

/// Why a destroy could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestroyPlanError {
    #[error(
        "refusing to destroy snapshots of dataset {0:?}: not a plain dataset name \
         (empty, or contains '@', ',' or '%'); check the spec's pool and dataset"
    )]
    BadDataset(String),
    #[error(
        "refusing to destroy snapshot {0:?}: the name is empty or contains '@', ',', '%' or '/', \
         which `zfs destroy` would read as several snapshots or a range; destroy it by hand if \
         it really must go"
    )]
    BadSnapshotName(String),
}

/// Plan the `zfs destroy` invocations that remove `names` from `dataset`.
///
/// Each inner vector is the argument list following `zfs destroy` for one invocation (today
/// always a single argument). With `batch_supported` (OpenZFS), names are joined with the comma
/// syntax `dataset@a,b,c` into as few invocations as keep each argument at most `max_arg_len`
/// bytes (a name too long to share an argument gets one alone); without it (zfs-fuse), one
/// `dataset@a` per snapshot. Order is preserved.
///
/// Names that `zfs destroy` would read as something else (a `,` list, a `%` range, a second `@`)
/// are refused rather than passed on: a destroy must remove exactly what the plan says.
pub fn destroy_batches(
    dataset: &str,
    names: &[String],
    batch_supported: bool,
    max_arg_len: usize,
) -> Result<Vec<Vec<String>>, DestroyPlanError> {
    if dataset.is_empty() || dataset.contains(['@', ',', '%']) {
        return Err(DestroyPlanError::BadDataset(dataset.to_owned()));
    }
    if let Some(bad) = names
        .iter()
        .find(|n| n.is_empty() || n.contains(['@', ',', '%', '/']))
    {
        return Err(DestroyPlanError::BadSnapshotName(bad.clone()));
    }
    if !batch_supported {
        return Ok(names
            .iter()
            .map(|n| vec![format!("{dataset}@{n}")])
            .collect());
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for n in names {
        if current.is_empty() {
            current = format!("{dataset}@{n}");
        } else if current.len() + 1 + n.len() <= max_arg_len {
            current.push(',');
            current.push_str(n);
        } else {
            out.push(vec![std::mem::take(&mut current)]);
            current = format!("{dataset}@{n}");
        }
    }
    if !current.is_empty() {
        out.push(vec![current]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn snap(name: &str, creation: &str, txg: u64) -> Snapshot {
        Snapshot {
            name: name.to_owned(),
            guid: txg.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            creation: ts(creation),
            createtxg: Some(txg),
            userrefs: 0,
            used: 0,
            written: None,
        }
    }

    /// An owned snapshot named after its creation.
    fn owned(creation: &str, txg: u64) -> Snapshot {
        snap(&snapshot_name("sk", ts(creation)), creation, txg)
    }

    fn survivors(d: &PruneDecision) -> BTreeSet<String> {
        d.keep.iter().map(|k| k.snapshot.name.clone()).collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn name_form() {
        assert_eq!(
            snapshot_name("sk", ts("2026-11-28T18:00:00Z")),
            "sk_20261128T180000Z"
        );
        assert_eq!(
            snapshot_name("sk", ts("2026-11-28T18:00:59.999Z")),
            "sk_20261128T180059Z"
        );
        assert_eq!(
            snapshot_name("a-b", ts("0999-01-02T03:04:05Z")),
            "a-b_09990102T030405Z"
        );
    }

    #[test]
    fn ownership_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("sk_20261128T180000Z", Some("2026-11-28T18:00:00Z")),
            ("sk_20240229T235959Z", Some("2024-02-29T23:59:59Z")),
            ("sk2_20261128T180000Z", None),
            ("skx", None),
            ("sk", None),
            ("sk_", None),
            ("sk_garbage", None),
            ("autosnap_2026-11-28_18:00:00_hourly", None),
            ("sk_20261128T180000", None),
            ("sk_20261128T180000Z.bak", None),
            ("sk_20261128t180000z", None),
            ("sk_2026112XT180000Z", None),
            ("sk_20260230T000000Z", None),
            ("sk_20261128T240000Z", None),
            ("sk_20261128T235960Z", None),
            ("sk_+0261128T180000Z", None),
            ("sk__20261128T180000Z", None),
            ("SK_20261128T180000Z", None),
            ("xsk_20261128T180000Z", None),
            ("sk_２0261128T180000Z", None),
        ];
        for (name, expect) in table {
            assert_eq!(parse_owned("sk", name), expect.map(ts), "{name}");
        }
        // A longer prefix that starts like ours is not ours, and vice versa.
        assert_eq!(parse_owned("sk", "sk_a_20261128T180000Z"), None);
        assert_eq!(parse_owned("sk_a", "sk_20261128T180000Z"), None);
        assert_eq!(
            parse_owned("sk_a", "sk_a_20261128T180000Z"),
            Some(ts("2026-11-28T18:00:00Z"))
        );
    }

    #[test]
    fn due_table() {
        let hour = std::time::Duration::from_secs(3600);
        let now = ts("2026-11-28T18:00:00Z");
        let foreign_recent = snap("autosnap_x", "2026-11-28T17:59:00Z", 9);
        let cases: &[(&[Snapshot], bool, &str)] = &[
            (&[], true, "no snapshot at all"),
            (
                std::slice::from_ref(&foreign_recent),
                true,
                "only a foreign one",
            ),
            (&[owned("2026-11-28T17:00:00Z", 1)], true, "exactly every"),
            (&[owned("2026-11-28T17:00:01Z", 1)], false, "just short"),
            (
                &[
                    owned("2026-11-28T17:30:00Z", 2),
                    owned("2026-11-28T10:00:00Z", 1),
                ],
                false,
                "newest decides, whatever the order",
            ),
            (&[owned("2026-11-28T19:00:00Z", 1)], false, "future name"),
        ];
        for (snaps, expect, why) in cases {
            assert_eq!(snapshot_due("sk", hour, snaps, now), *expect, "{why}");
        }
        // The name decides, not the creation (which is on the host's clock).
        let mut s = owned("2026-11-28T16:00:00Z", 1);
        s.creation = ts("2026-11-28T17:59:00Z");
        assert!(snapshot_due("sk", hour, &[s], now));
        assert!(!snapshot_due(
            "sk",
            std::time::Duration::MAX,
            &[owned("2000-01-01T00:00:00Z", 1)],
            now
        ));
    }

    /// A short policy on a few days of 6-hourly snapshots: the survivors are listed by hand.
    #[test]
    fn short_policy_explicit() {
        // Every 6 hours from Fri 2026-11-20 00:00 to Sat 2026-11-28 18:00.
        let mut snaps = Vec::new();
        let mut t = ts("2026-11-20T00:00:00Z");
        let mut txg = 1;
        while t <= ts("2026-11-28T18:00:00Z") {
            snaps.push(snap(&snapshot_name("sk", t), &t.to_string(), txg));
            t = t.checked_add(jiff::SignedDuration::from_hours(6)).unwrap();
            txg += 1;
        }
        let keep = Keep {
            hourly: 13,
            daily: 3,
            weekly: 2,
            ..Keep::default()
        };
        let d = prune(&keep, "sk", &snaps, &[], ts("2026-11-28T18:30:00Z"));
        let expect = names(&[
            // hourly 13: hours 06..18 of the 28th: snapshots at 06, 12, 18.
            "sk_20261128T060000Z",
            "sk_20261128T120000Z",
            "sk_20261128T180000Z",
            // daily 3: 26th, 27th (28th already kept).
            "sk_20261126T180000Z",
            "sk_20261127T180000Z",
            // weekly 2: week 48 (Mon 23 to Sun 29) -> the newest, week 47 -> Sun 22 18:00.
            "sk_20261122T180000Z",
        ]);
        assert_eq!(survivors(&d), expect);
        assert_eq!(d.destroy.len(), snaps.len() - expect.len());
        let newest = d
            .keep
            .iter()
            .find(|k| k.snapshot.name == "sk_20261128T180000Z")
            .unwrap();
        assert_eq!(
            newest.reasons,
            vec![
                KeepReason::Newest,
                KeepReason::Rule {
                    rule: Rule::Hourly,
                    bucket: "2026-11-28T18Z".into()
                },
                KeepReason::Rule {
                    rule: Rule::Daily,
                    bucket: "2026-11-28".into()
                },
                KeepReason::Rule {
                    rule: Rule::Weekly,
                    bucket: "2026-W48".into()
                },
            ]
        );
        // Destroy list is oldest first.
        assert_eq!(d.destroy[0].name, "sk_20261120T000000Z");
    }

    fn hourly_year(from: &str, to: &str) -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut t = ts(from);
        let mut txg = 100;
        while t <= ts(to) {
            out.push(snap(&snapshot_name("sk", t), &t.to_string(), txg));
            t = t.checked_add(jiff::SignedDuration::from_hours(1)).unwrap();
            txg += 3;
        }
        out
    }

    /// The seed's one-year policy over one year of hourly snapshots (2026, 8760 of them),
    /// pruned just before midnight on 31 December. Expected survivors derived by hand from
    /// the calendar.
    #[test]
    fn seed_policy_one_year_of_hourly() {
        let snaps = hourly_year("2026-01-01T00:00:00Z", "2026-12-31T23:00:00Z");
        assert_eq!(snaps.len(), 8760);
        let keep = Keep {
            hourly: 48,
            daily: 30,
            weekly: 8,
            monthly: 12,
            yearly: 1,
        };
        let d = prune(&keep, "sk", &snaps, &[], ts("2026-12-31T23:30:00Z"));

        let mut expect = BTreeSet::new();
        // hourly 48: every hour of 30 and 31 December.
        for day in [30, 31] {
            for h in 0..24 {
                expect.insert(format!("sk_202612{day:02}T{h:02}0000Z"));
            }
        }
        // daily 30: 2 to 31 December, each day's 23:00.
        for day in 2..=31 {
            expect.insert(format!("sk_202612{day:02}T230000Z"));
        }
        // weekly 8: ISO weeks 46..53 of 2026; each ends on a Sunday, except week 53 (28 Dec to
        // 3 Jan 2027) whose newest snapshot is 31 Dec.
        for date in [
            "20261115", "20261122", "20261129", "20261206", "20261213", "20261220", "20261227",
            "20261231",
        ] {
            expect.insert(format!("sk_{date}T230000Z"));
        }
        // monthly 12: last day of each month of 2026; yearly 1: 31 December (already there).
        for date in [
            "20260131", "20260228", "20260331", "20260430", "20260531", "20260630", "20260731",
            "20260831", "20260930", "20261031", "20261130", "20261231",
        ] {
            expect.insert(format!("sk_{date}T230000Z"));
        }
        // 48 hourly + 28 more days + 3 more weeks (15, 22, 29 Nov) + 11 more months.
        assert_eq!(expect.len(), 48 + 28 + 3 + 11);
        assert_eq!(survivors(&d), expect);
        assert_eq!(d.destroy.len(), 8760 - 90);

        // Specific reasons on a few survivors.
        let reasons = |n: &str| {
            d.keep
                .iter()
                .find(|k| k.snapshot.name == n)
                .map(|k| k.reasons.clone())
                .unwrap()
        };
        assert_eq!(
            reasons("sk_20261129T230000Z"),
            vec![KeepReason::Rule {
                rule: Rule::Weekly,
                bucket: "2026-W48".into()
            }]
        );
        assert_eq!(
            reasons("sk_20260131T230000Z"),
            vec![KeepReason::Rule {
                rule: Rule::Monthly,
                bucket: "2026-01".into()
            }]
        );
        assert!(reasons("sk_20261231T230000Z").contains(&KeepReason::Rule {
            rule: Rule::Weekly,
            bucket: "2026-W53".into()
        }));
        assert!(reasons("sk_20261231T230000Z").contains(&KeepReason::Rule {
            rule: Rule::Yearly,
            bucket: "2026".into()
        }));
    }

    /// The same year pruned on 1 January 2027 00:30: the new year's single snapshot takes the
    /// yearly and monthly slots; the window slides back to February 2026.
    #[test]
    fn year_boundary_with_seed_policy() {
        let snaps = hourly_year("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
        let keep = Keep {
            hourly: 48,
            daily: 30,
            weekly: 8,
            monthly: 12,
            yearly: 1,
        };
        let d = prune(&keep, "sk", &snaps, &[], ts("2027-01-01T00:30:00Z"));
        let kept = survivors(&d);
        // yearly 1 counts 2027 only: 2026's yearly survivor stays only through other rules.
        // monthly 12 = Jan 2027 back to Feb 2026: January 2026 is gone.
        assert!(!kept.contains("sk_20260131T230000Z"));
        assert!(kept.contains("sk_20260228T230000Z"));
        assert!(kept.contains("sk_20270101T000000Z"));
        // hourly 48: 30 Dec 01:00 .. 1 Jan 00:00.
        assert!(!kept.contains("sk_20261230T000000Z"));
        assert!(kept.contains("sk_20261230T010000Z"));
        // daily 30: 3 Dec .. 1 Jan; 2 Dec 23:00 is not a day survivor nor a Sunday.
        assert!(!kept.contains("sk_20261202T230000Z"));
        assert!(kept.contains("sk_20261203T230000Z"));
        // weekly 8: weeks 53 of 2026 back to 46: 15 Nov (Sunday of W46) stays, 8 Nov not.
        assert!(kept.contains("sk_20261115T230000Z"));
        assert!(!kept.contains("sk_20261108T230000Z"));
        // 47 hourly of 2026 + 1 of 2027, 27 more days (3..29 Dec; 30 and 31 Dec 23:00 and
        // 1 Jan 00:00 are hourly), 3 Sundays of November, 10 month ends (Feb..Nov).
        assert_eq!(kept.len(), 48 + 27 + 3 + 10);
    }

    #[test]
    fn calendar_boundaries() {
        // ISO week 53 of 2026 runs Mon 28 Dec 2026 .. Sun 3 Jan 2027: one weekly bucket across
        // the year change; week 1 of 2027 starts Mon 4 Jan.
        let snaps = vec![
            owned("2026-12-27T12:00:00Z", 1), // Sun, W52
            owned("2026-12-31T12:00:00Z", 2), // Thu, W53
            owned("2027-01-02T12:00:00Z", 3), // Sat, W53
            owned("2027-01-03T23:59:59Z", 4), // Sun, W53 (last second)
            owned("2027-01-04T00:00:00Z", 5), // Mon, 2027-W01
        ];
        let weekly = Keep {
            weekly: 2,
            ..Keep::default()
        };
        let d = prune(&weekly, "sk", &snaps, &[], ts("2027-01-04T06:00:00Z"));
        assert_eq!(
            survivors(&d),
            names(&["sk_20270103T235959Z", "sk_20270104T000000Z"])
        );
        let w53 = &d.keep[0];
        assert_eq!(
            w53.reasons,
            vec![KeepReason::Rule {
                rule: Rule::Weekly,
                bucket: "2026-W53".into()
            }]
        );

        // Month and year: 31 Dec vs 1 Jan are different months and years, same ISO week.
        let monthly = Keep {
            monthly: 2,
            ..Keep::default()
        };
        let d = prune(&monthly, "sk", &snaps, &[], ts("2027-01-04T06:00:00Z"));
        assert_eq!(
            survivors(&d),
            names(&["sk_20261231T120000Z", "sk_20270104T000000Z"])
        );
        let yearly = Keep {
            yearly: 2,
            ..Keep::default()
        };
        let d = prune(&yearly, "sk", &snaps, &[], ts("2027-01-04T06:00:00Z"));
        assert_eq!(
            survivors(&d),
            names(&["sk_20261231T120000Z", "sk_20270104T000000Z"])
        );
        // Daily: the last second of a day and the first of the next are different days.
        let daily = Keep {
            daily: 3,
            ..Keep::default()
        };
        let d = prune(&daily, "sk", &snaps, &[], ts("2027-01-04T06:00:00Z"));
        assert_eq!(
            survivors(&d),
            names(&[
                "sk_20270102T120000Z",
                "sk_20270103T235959Z",
                "sk_20270104T000000Z"
            ])
        );
        // Leap day is its own day and February's newest.
        let leap = vec![
            owned("2028-02-28T23:00:00Z", 1),
            owned("2028-02-29T01:00:00Z", 2),
            owned("2028-02-29T23:00:00Z", 3),
            owned("2028-03-01T00:00:00Z", 4),
        ];
        let k = Keep {
            daily: 2,
            monthly: 2,
            ..Keep::default()
        };
        let d = prune(&k, "sk", &leap, &[], ts("2028-03-01T01:00:00Z"));
        assert_eq!(
            survivors(&d),
            names(&["sk_20280229T230000Z", "sk_20280301T000000Z"])
        );
    }

    #[test]
    fn empty_buckets_count() {
        // Outage from 2 to 9 Dec: daily 3 on the 10th keeps the 10th and nothing before
        // (8th and 9th have no snapshot but still count), unlike a count-based policy.
        let snaps = vec![
            owned("2026-12-01T12:00:00Z", 1),
            owned("2026-12-01T18:00:00Z", 2),
            owned("2026-12-10T06:00:00Z", 3),
        ];
        let k = Keep {
            daily: 3,
            ..Keep::default()
        };
        let d = prune(&k, "sk", &snaps, &[], ts("2026-12-10T07:00:00Z"));
        assert_eq!(survivors(&d), names(&["sk_20261210T060000Z"]));
        assert_eq!(d.destroy.len(), 2);
    }

    #[test]
    fn safety_rules() {
        let now = ts("2026-12-10T12:00:00Z");
        let mut held = owned("2026-01-01T00:00:00Z", 1);
        held.userrefs = 2;
        let base = owned("2026-02-01T00:00:00Z", 2);
        let by_name = owned("2026-02-02T00:00:00Z", 3);
        let plain_old = owned("2026-03-01T00:00:00Z", 4);
        let foreign = snap(
            "autosnap_2026-03-02_00:00:00_daily",
            "2026-03-02T00:00:00Z",
            5,
        );
        let garbage = snap("sk_garbage", "2026-03-03T00:00:00Z", 6);
        let newest = owned("2026-12-09T00:00:00Z", 7);
        // Created after now (host clock ahead); still owned.
        let future = owned("2026-12-11T00:00:00Z", 8);
        let snaps = vec![
            future.clone(),
            newest.clone(),
            garbage.clone(),
            foreign.clone(),
            plain_old.clone(),
            by_name.clone(),
            base.clone(),
            held.clone(),
        ];
        let protected = [
            SnapshotRef::Guid(base.guid),
            SnapshotRef::Name(by_name.name.clone()),
        ];
        // No rule at all: only the safety rules keep anything.
        let d = prune(&Keep::default(), "sk", &snaps, &protected, now);
        assert_eq!(d.destroy_names(), vec![plain_old.name.clone()]);
        let reason_of = |n: &str| {
            d.keep
                .iter()
                .find(|k| k.snapshot.name == n)
                .map(|k| k.reasons.clone())
                .unwrap()
        };
        assert_eq!(
            reason_of(&held.name),
            vec![KeepReason::Held { userrefs: 2 }]
        );
        assert_eq!(reason_of(&base.name), vec![KeepReason::Protected]);
        assert_eq!(reason_of(&by_name.name), vec![KeepReason::Protected]);
        assert_eq!(reason_of(&foreign.name), vec![KeepReason::NotOwned]);
        assert_eq!(reason_of(&garbage.name), vec![KeepReason::NotOwned]);
        assert_eq!(reason_of(&newest.name), vec![KeepReason::Newest]);
        assert_eq!(reason_of(&future.name), vec![KeepReason::Future]);
        // Output is in age order.
        let order: Vec<u64> = d.keep.iter().filter_map(|k| k.snapshot.createtxg).collect();
        assert_eq!(order, vec![1, 2, 3, 5, 6, 7, 8]);
    }

    #[test]
    fn createtxg_orders_same_second() {
        // Two owned snapshots in the same second (names differ by hand): txg says which is newest.
        let a = snap("sk_20261210T120000Z", "2026-12-10T12:00:00Z", 20);
        let b = snap("sk_20261210T115959Z", "2026-12-10T12:00:00Z", 10);
        let d = prune(
            &Keep::default(),
            "sk",
            &[a.clone(), b.clone()],
            &[],
            ts("2026-12-10T13:00:00Z"),
        );
        assert_eq!(d.destroy_names(), vec![b.name]);
    }

    #[test]
    fn batches() {
        let n = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let list = n(&["a1", "b22", "c333", "d4"]);
        assert_eq!(
            destroy_batches("p/ds", &list, false, 1000).unwrap(),
            vec![
                vec!["p/ds@a1".to_owned()],
                vec!["p/ds@b22".to_owned()],
                vec!["p/ds@c333".to_owned()],
                vec!["p/ds@d4".to_owned()],
            ]
        );
        assert_eq!(
            destroy_batches("p/ds", &list, true, 1000).unwrap(),
            vec![vec!["p/ds@a1,b22,c333,d4".to_owned()]]
        );
        // "p/ds@a1,b22" is 11 bytes, adding ",c333" would make 16; "p/ds@c333,d4" is 12.
        assert_eq!(
            destroy_batches("p/ds", &list, true, 12).unwrap(),
            vec![
                vec!["p/ds@a1,b22".to_owned()],
                vec!["p/ds@c333,d4".to_owned()],
            ]
        );
        assert_eq!(
            destroy_batches("p/ds", &list, true, 11).unwrap(),
            vec![
                vec!["p/ds@a1,b22".to_owned()],
                vec!["p/ds@c333".to_owned()],
                vec!["p/ds@d4".to_owned()],
            ]
        );
        // A limit smaller than one name: one per invocation, nothing dropped.
        assert_eq!(
            destroy_batches("p/ds", &list, true, 3).unwrap().len(),
            list.len()
        );
        assert!(destroy_batches("p/ds", &[], true, 10).unwrap().is_empty());
        for bad in ["a,b", "a%b", "a@b", "", "x/y"] {
            assert_eq!(
                destroy_batches("p/ds", &n(&["ok", bad]), true, 100),
                Err(DestroyPlanError::BadSnapshotName(bad.to_owned()))
            );
        }
        assert!(matches!(
            destroy_batches("p/ds@x", &list, true, 100),
            Err(DestroyPlanError::BadDataset(_))
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NOW: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z

        fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
            (
                // up to ~2 years before now, or a little after (future)
                -(2 * 366 * 86_400i64)..(3 * 86_400i64),
                0u8..10,
                0u32..3,
                any::<u64>(),
            )
                .prop_map(|(offset, kind, userrefs, guid)| {
                    let creation = Timestamp::from_second(NOW + offset).unwrap();
                    let name = match kind {
                        0 => format!("autosnap_{}", creation.as_second()),
                        1 => format!("sk2_{}", format_stamp(creation)),
                        2 => "sk_garbage".to_owned(),
                        _ => snapshot_name("sk", creation),
                    };
                    Snapshot {
                        name,
                        guid,
                        creation,
                        createtxg: None,
                        // Mostly unheld.
                        userrefs: if userrefs == 2 { 1 } else { 0 },
                        used: 0,
                        written: None,
                    }
                })
        }

        fn arb_case() -> impl Strategy<Value = (Keep, Vec<Snapshot>, Vec<SnapshotRef>)> {
            (
                (0u32..50, 0u32..40, 0u32..10, 0u32..14, 0u32..3),
                prop::collection::vec(arb_snapshot(), 0..120),
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            )
                .prop_map(|((h, d, w, m, y), mut snaps, picks)| {
                    // Make createtxg follow creation, as on a real host.
                    snaps.sort_by_key(|s| s.creation);
                    for (i, s) in snaps.iter_mut().enumerate() {
                        s.createtxg = Some(i as u64 + 1);
                    }
                    let protected = if snaps.is_empty() {
                        Vec::new()
                    } else {
                        picks
                            .iter()
                            .map(|p| SnapshotRef::Guid(snaps[p.index(snaps.len())].guid))
                            .collect()
                    };
                    let keep = Keep {
                        hourly: h,
                        daily: d,
                        weekly: w,
                        monthly: m,
                        yearly: y,
                    };
                    (keep, snaps, protected)
                })
        }

        proptest! {
            #[test]
            fn never_destroys_what_must_stay((keep, snaps, protected) in arb_case()) {
                let now = Timestamp::from_second(NOW).unwrap();
                let d = prune(&keep, "sk", &snaps, &protected, now);
                prop_assert_eq!(d.destroy.len() + d.keep.len(), snaps.len());
                let newest_owned = snaps
                    .iter()
                    .filter(|s| parse_owned("sk", &s.name).is_some())
                    .max_by(|a, b| age_order(a, b));
                for s in &d.destroy {
                    prop_assert!(parse_owned("sk", &s.name).is_some(), "foreign {}", s.name);
                    prop_assert_eq!(s.userrefs, 0);
                    prop_assert!(s.creation <= now);
                    prop_assert!(!protected.iter().any(|p| p.matches(s)));
                    prop_assert!(Some(s) != newest_owned);
                }
                for k in &d.keep {
                    prop_assert!(!k.reasons.is_empty());
                }
            }

            #[test]
            fn idempotent((keep, snaps, protected) in arb_case()) {
                let now = Timestamp::from_second(NOW).unwrap();
                let first = prune(&keep, "sk", &snaps, &protected, now);
                let survivors: Vec<Snapshot> =
                    first.keep.iter().map(|k| k.snapshot.clone()).collect();
                let second = prune(&keep, "sk", &survivors, &protected, now);
                prop_assert!(second.destroy.is_empty(), "{}", second);
                prop_assert_eq!(second.keep, first.keep);
            }

            #[test]
            fn name_round_trips(secs in -62_167_219_200i64..253_402_300_800i64, nanos in 0i32..1_000_000_000) {
                // Years 0000 to 9999.
                let at = Timestamp::new(secs, nanos).unwrap();
                let name = snapshot_name("sk", at);
                prop_assert_eq!(parse_owned("sk", &name), Some(Timestamp::from_second(secs).unwrap()));
                prop_assert_eq!(parse_owned("s", &name), None);
            }

            #[test]
            fn parse_never_panics(name in ".{0,40}") {
                let _ = parse_owned("sk", &name);
            }

            #[test]
            fn batches_cover_everything_in_order(
                names in prop::collection::vec("[a-z0-9_]{1,20}", 0..60),
                max in 1usize..200,
                batch in any::<bool>(),
            ) {
                let out = destroy_batches("pool/ds", &names, batch, max).unwrap();
                let mut back = Vec::new();
                for inv in &out {
                    prop_assert_eq!(inv.len(), 1);
                    let arg = &inv[0];
                    let rest = arg.strip_prefix("pool/ds@").unwrap();
                    let parts: Vec<&str> = rest.split(',').collect();
                    if parts.len() > 1 {
                        prop_assert!(batch);
                        prop_assert!(arg.len() <= max);
                    }
                    back.extend(parts.into_iter().map(str::to_owned));
                }
                prop_assert_eq!(back, names);
            }
        }
    }
}
