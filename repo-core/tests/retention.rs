#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The GFS selection against an independent, deliberately plain implementation, on generated
//! histories: years of hourly snapshots with gaps, several time zones, several hosts.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use cairn_repo::format::snapshot::{Snapshot, SnapshotKind, Summary};
use cairn_repo::retention::{apply, GroupBy, Period, Policy, HOLD_TAG};
use cairn_repo::testing::Rng;
use cairn_repo::{ErrorKind, Id};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

fn snap(t: Timestamp, host: &str, tags: Vec<String>) -> Snapshot {
    Snapshot {
        version: 1,
        time: t.to_string(),
        host: host.into(),
        user: "u".into(),
        tenant: "t".into(),
        kind: SnapshotKind::Files,
        paths: vec!["/data".into()],
        tags,
        parent: None,
        tree: Id::default(),
        summary: Summary::default(),
        program_version: "test".into(),
        incomplete: false,
        command: vec![],
        pg: None,
        original: None,
    }
}

/// Hourly snapshots over `years`, with gaps (days or weeks missing), jitter, and tags.
fn history(seed: u64, years: i64) -> Vec<(Id, Snapshot)> {
    let mut rng = Rng::new(seed);
    let start = Timestamp::from_second(1_600_000_000).unwrap();
    let mut out = Vec::new();
    let hours = years * 365 * 24;
    let mut h = 0i64;
    while h < hours {
        if rng.below(500) == 0 {
            h += 24 * (1 + rng.below(20) as i64); // a gap of days
            continue;
        }
        let t = start + SignedDuration::from_secs(h * 3600 + rng.below(3000) as i64);
        let mut tags = Vec::new();
        if rng.below(2000) == 0 {
            tags.push(HOLD_TAG.to_string());
        }
        if rng.below(300) == 0 {
            tags.push("release".to_string());
        }
        let host = if rng.below(10) == 0 { "b" } else { "a" };
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        out.push((Id(id), snap(t, host, tags)));
        h += 1 + rng.below(3) as i64;
    }
    out
}

/// The plain version: per group, per rule, the set of snapshots to keep.
fn expected(snaps: &[(Id, Snapshot)], p: &Policy, tz: &TimeZone) -> HashSet<Id> {
    let mut groups: BTreeMap<String, Vec<(Timestamp, Id, &Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        groups
            .entry(s.host.clone())
            .or_default()
            .push((s.time.parse().unwrap(), *id, s));
    }
    let mut keep = HashSet::new();
    for members in groups.values_mut() {
        members.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let newest = members[0].0;
        for (_, id, s) in members.iter() {
            if s.tags.iter().any(|t| t == HOLD_TAG || p.tags.contains(t)) {
                keep.insert(*id);
            }
        }
        if let Some(n) = p.last {
            keep.extend(members.iter().take(n).map(|m| m.1));
        }
        if let Some(d) = p.within {
            keep.extend(
                members
                    .iter()
                    .filter(|m| newest.duration_since(m.0) <= d)
                    .map(|m| m.1),
            );
        }
        let newest_per_period =
            |period: Period, candidates: &[&(Timestamp, Id, &Snapshot)]| -> Vec<Id> {
                // Distinct periods, newest first; in each, the newest snapshot.
                let mut seen = BTreeSet::new();
                let mut picks = Vec::new();
                for m in candidates {
                    if seen.insert(period.key(m.0, tz)) {
                        picks.push(m.1);
                    }
                }
                picks
            };
        let all: Vec<&(Timestamp, Id, &Snapshot)> = members.iter().collect();
        for (period, n) in &p.periods {
            keep.extend(newest_per_period(*period, &all).into_iter().take(*n));
        }
        for (period, d) in &p.within_periods {
            let recent: Vec<&(Timestamp, Id, &Snapshot)> = members
                .iter()
                .filter(|m| newest.duration_since(m.0) <= *d)
                .collect();
            keep.extend(newest_per_period(*period, &recent));
        }
    }
    keep
}

fn zones() -> Vec<TimeZone> {
    let mut z = vec![
        TimeZone::UTC,
        TimeZone::fixed(jiff::tz::offset(-5)),
        TimeZone::fixed(jiff::tz::offset(13)),
    ];
    if let Ok(ny) = TimeZone::get("America/New_York") {
        z.push(ny); // with daylight saving time
    }
    z
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn gfs_matches_the_plain_implementation(seed in any::<u64>(), zone in 0usize..4, rules in proptest::collection::vec(0u8..9, 1..5), n in 1usize..30) {
        let snaps = history(seed, 3);
        let mut p = Policy::default();
        for r in rules {
            match r {
                0 => p.last = Some(n),
                1 => { p.periods.insert(Period::Hourly, n * 3); }
                2 => { p.periods.insert(Period::Daily, n); }
                3 => { p.periods.insert(Period::Weekly, n / 2 + 1); }
                4 => { p.periods.insert(Period::Monthly, n / 3 + 1); }
                5 => { p.periods.insert(Period::Yearly, 2); }
                6 => p.within = Some(SignedDuration::from_hours(24 * n as i64)),
                7 => { p.within_periods.insert(Period::Daily, SignedDuration::from_hours(24 * 30)); }
                _ => p.tags.push("release".into()),
            }
        }
        let zs = zones();
        let tz = &zs[zone % zs.len()];
        let decisions = apply(&snaps, &p, GroupBy { host: true, paths: true, tags: false }, tz).unwrap();
        prop_assert_eq!(decisions.len(), snaps.len());
        let kept: HashSet<Id> = decisions.iter().filter(|d| d.keep()).map(|d| d.id).collect();
        let want = expected(&snaps, &p, tz);
        prop_assert_eq!(kept.len(), want.len());
        prop_assert!(kept == want);
        // Held snapshots are never removed, whatever the policy.
        for (id, s) in &snaps {
            if s.tags.iter().any(|t| t == HOLD_TAG) {
                prop_assert!(kept.contains(id));
            }
        }
    }
}

#[test]
fn seven_daily_four_weekly_twelve_monthly_five_yearly() {
    let snaps = history(42, 6);
    let mut p = Policy::default();
    p.periods.insert(Period::Daily, 7);
    p.periods.insert(Period::Weekly, 4);
    p.periods.insert(Period::Monthly, 12);
    p.periods.insert(Period::Yearly, 5);
    let d = apply(&snaps, &p, GroupBy::default(), &TimeZone::UTC).unwrap();
    let kept: Vec<_> = d
        .iter()
        .filter(|d| d.keep() && d.group.host.as_deref() == Some("a"))
        .collect();
    let holds = d
        .iter()
        .filter(|d| d.reasons.iter().any(|r| r == "hold") && d.group.host.as_deref() == Some("a"))
        .count();
    // At most 7 + 4 + 12 + 5 distinct snapshots (fewer when rules overlap), plus holds.
    assert!(
        kept.len() <= 28 + holds && kept.len() >= 12,
        "kept {}",
        kept.len()
    );
    assert!(kept
        .iter()
        .any(|d| d.reasons.contains(&"yearly".to_string())));
    // Every kept snapshot says why.
    assert!(kept.iter().all(|d| !d.reasons.is_empty()));
}

#[test]
fn a_policy_of_zeros_is_refused_instead_of_removing_everything() {
    let snaps = history(7, 1);
    let mut zeros = Vec::new();
    zeros.push(Policy {
        last: Some(0),
        ..Default::default()
    });
    for period in Period::ALL {
        let mut p = Policy::default();
        p.periods.insert(period, 0);
        zeros.push(p);
    }
    zeros.push(Policy {
        within: Some(SignedDuration::ZERO),
        ..Default::default()
    });
    let mut all = Policy {
        last: Some(0),
        within: Some(SignedDuration::ZERO),
        ..Default::default()
    };
    for period in Period::ALL {
        all.periods.insert(period, 0);
        all.within_periods.insert(period, SignedDuration::ZERO);
    }
    zeros.push(all);
    zeros.push(Policy::default());
    for p in &zeros {
        assert!(!p.keeps_something(), "{p:?}");
        let err = apply(&snaps, p, GroupBy::default(), &TimeZone::UTC).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{p:?}");
        assert!(err.to_string().contains("remove every snapshot"), "{err}");
    }
}

#[test]
fn a_zero_beside_a_positive_rule_keeps_nothing_of_its_kind() {
    let snaps = history(8, 1);
    let mut daily = Policy::default();
    daily.periods.insert(Period::Daily, 5);
    let mut with_zeros = daily.clone();
    with_zeros.last = Some(0);
    with_zeros.periods.insert(Period::Weekly, 0);
    assert!(with_zeros.keeps_something());
    let kept = |p: &Policy| -> HashSet<Id> {
        apply(&snaps, p, GroupBy::default(), &TimeZone::UTC)
            .unwrap()
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id)
            .collect()
    };
    let want = kept(&daily);
    assert!(!want.is_empty());
    assert_eq!(kept(&with_zeros), want);
}
