//! Every seed that found a defect (docs/SIMULATOR.md) keeps passing: a regression of any of
//! those fixes breaks one of these runs, exactly as it first broke.

/// (seed, steps, what it found on the code before the fix).
const FOUND: &[(u64, usize, &str)] = &[
    (
        13,
        200,
        "snapshot and rollback of the promoted replica unordered; replica started by hand skipped fencing",
    ),
    (
        23,
        200,
        "replica started by hand skipped fencing; later a SINCE mailbox check replayed a message twice",
    ),
    (
        9,
        200,
        "replay window from the snapshot taken after the promotion",
    ),
    (
        3,
        200,
        "old snapshots pruned on the active counted as 'ahead'; same-second snapshot names",
    ),
    (8, 200, "same-second snapshot names"),
    (
        19,
        200,
        "a returning node's queued deliveries delivered again",
    ),
    (
        28,
        200,
        "resync rollback -r over the returning node's own held snapshots",
    ),
    (
        0,
        200,
        "resync records of an older failover overriding a newer one",
    ),
    (
        30,
        200,
        "an interrupted switchover's read-only old copy rolled back by the next failover",
    ),
    (
        31,
        200,
        "three nodes: holds on the serving copy moved back and forth between replicas",
    ),
    (
        131,
        200,
        "the replay ledger counted a replay into another node",
    ),
    (
        148,
        200,
        "a node named by the active's failover record taken for a live copy",
    ),
    (
        164,
        200,
        "a start on a writable copy while the old active was out of sight owed no replay",
    ),
    (90, 200, "a returning copy sharing no snapshot refused"),
    (
        170,
        200,
        "three nodes: replicas pruning the snapshots they share",
    ),
    (
        86,
        200,
        "a backlog ignoring deliveries queued on the node about to serve",
    ),
    (
        75,
        200,
        "three nodes: records not travelling with a switchover",
    ),
    (
        1360,
        300,
        "a replay owed to a copy that lost the service forgotten, then purged",
    ),
    (
        1485,
        300,
        "deliveries left queued on a passive node never handed over",
    ),
    (
        1549,
        300,
        "a drain's replay narrowed to the failover's window",
    ),
    (
        1504,
        300,
        "mount of a writable copy not ordered after the other copy's demotion",
    ),
    (
        377,
        200,
        "deliveries queued on a node since an interrupted hand-over, delivered again once a failover promotes it",
    ),
    (
        627,
        200,
        "deliveries queued on a promoted replica delivered on top of their replay",
    ),
    (
        1,
        200,
        "the scheduler sleeping past the 6 h teardown of a stale scratch clone",
    ),
    (
        975,
        200,
        "a fenced node powered back during an apply counted as seen by the replay's observation",
    ),
    (
        953,
        200,
        "two failovers in the same second: the older promotion's record won over the spec's active",
    ),
    (
        785,
        200,
        "a failover back to a copy kept the epoch of its earlier promotion: the copy promoted in between looked newer",
    ),
    (
        536,
        200,
        "a node marked synced by an earlier resync kept as synced when a new failover lost it",
    ),
    (
        319,
        200,
        "a failover caught up through a replica (a switchover from it) recorded no resync of the lost node",
    ),
    (
        705,
        200,
        "a replay's delivery left queued on a node that lost the service, delivered on top once a switchover moved the service back",
    ),
];

#[test]
fn every_seed_that_found_a_defect_passes() {
    let mut failed = Vec::new();
    for (seed, steps, what) in FOUND {
        if let Err(f) = sk_sim::run_seed(*seed, *steps, false) {
            failed.push(format!(
                "seed {seed} ({what}) fails again at step {}: {}",
                f.step, f.message
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
