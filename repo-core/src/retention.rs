//! Which snapshots a retention policy keeps, and why. Pure: no I/O.
//!
//! Snapshots are grouped (by host and paths unless told otherwise) and each group is judged
//! on its own. Within a group, newest first:
//! - `last N` keeps the N newest;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of the N newest
//!   periods (hours, days, ISO weeks, months, years) that have snapshots, in the given time
//!   zone;
//! - `within D` keeps every snapshot no older than D before the group's newest snapshot;
//!   `within-daily D` (and hourly, weekly, ...) keeps the newest of each period in that range;
//! - `tags` keeps snapshots carrying any of the tags;
//! - snapshots tagged [`HOLD_TAG`] are always kept (legal hold), whatever the policy.
//!
//! A snapshot may be kept for several reasons; all are reported.
//!
//! A zero (`last 0`, `daily 0`, `within 0s`) keeps nothing of its kind, so it is never a policy
//! by itself: [`apply`] refuses a policy in which no rule keeps anything (no rule at all, or
//! only zeros), because it would remove every snapshot it is given. Held snapshots do not
//! count: they are kept whatever the policy says.

use std::collections::{BTreeMap, HashSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::id::Id;

/// Snapshots with this tag are never forgotten.
pub const HOLD_TAG: &str = "hold";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// The period a time falls in, as a sortable key.
    pub fn key(self, t: Timestamp, tz: &TimeZone) -> (i32, i32, i32) {
        let z = t.to_zoned(tz.clone());
        let d = z.date();
        match self {
            Period::Hourly => (d.year() as i32, d.day_of_year() as i32, z.hour() as i32),
            Period::Daily => (d.year() as i32, d.day_of_year() as i32, 0),
            Period::Weekly => {
                let w = d.iso_week_date();
                (w.year() as i32, w.week() as i32, 0)
            }
            Period::Monthly => (d.year() as i32, d.month() as i32, 0),
            Period::Yearly => (d.year() as i32, 0, 0),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub last: Option<usize>,
    pub periods: BTreeMap<Period, usize>,
    pub within: Option<SignedDuration>,
    pub within_periods: BTreeMap<Period, SignedDuration>,
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.periods.is_empty()
            && self.within.is_none()
            && self.within_periods.is_empty()
            && self.tags.is_empty()
    }

    /// Whether at least one rule keeps snapshots: a count above zero, a duration above zero,
    /// or a tag. A policy of zeros only keeps nothing and is refused by [`apply`].
    pub fn keeps_something(&self) -> bool {
        self.last.is_some_and(|n| n > 0)
            || self.periods.values().any(|n| *n > 0)
            || self.within.is_some_and(|d| d.is_positive())
            || self.within_periods.values().any(|d| d.is_positive())
            || !self.tags.is_empty()
    }
}

/// What to group snapshots by before applying the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub host: Option<String>,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub id: Id,
    pub group: GroupKey,
    /// Empty when the snapshot is to be forgotten.
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

fn group_key(s: &Snapshot, by: GroupBy) -> GroupKey {
    let mut tags = s.tags.clone();
    tags.sort();
    let mut paths = s.paths.clone();
    paths.sort();
    GroupKey {
        host: by.host.then(|| s.host.clone()),
        paths: by.paths.then_some(paths),
        tags: by.tags.then_some(tags),
    }
}

/// Applies the policy. Snapshots whose time cannot be parsed are kept (never delete what is
/// not understood). Decisions come newest first within each group.
///
/// Fails with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when no rule of
/// the policy keeps anything ([`Policy::keeps_something`]): such a policy would remove every
/// snapshot.
pub fn apply(
    snapshots: &[(Id, Snapshot)],
    policy: &Policy,
    by: GroupBy,
    tz: &TimeZone,
) -> Result<Vec<Decision>> {
    if !policy.keeps_something() {
        return Err(Error::invalid(if policy.is_empty() {
            "the retention policy has no rule: it would remove every snapshot"
        } else {
            "the retention policy keeps nothing (every rule is zero): it would remove every snapshot"
        }));
    }
    let mut groups: BTreeMap<GroupKey, Vec<(Id, Timestamp, &Snapshot)>> = BTreeMap::new();
    let mut out = Vec::new();
    for (id, s) in snapshots {
        let group = group_key(s, by);
        match s.timestamp() {
            Some(t) => groups.entry(group).or_default().push((*id, t, s)),
            None => out.push(Decision {
                id: *id,
                group,
                reasons: vec!["time unreadable".into()],
            }),
        }
    }
    for (group, mut members) in groups {
        members.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        let newest = members[0].1;
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); members.len()];
        for (i, (_, _, s)) in members.iter().enumerate() {
            if s.tags.iter().any(|t| t == HOLD_TAG) {
                reasons[i].push("hold".into());
            }
            if let Some(t) = policy.tags.iter().find(|t| s.tags.contains(t)) {
                reasons[i].push(format!("tag {t}"));
            }
        }
        if let Some(n) = policy.last {
            for r in reasons.iter_mut().take(n) {
                r.push("last".into());
            }
        }
        if let Some(d) = policy.within {
            for (i, (_, t, _)) in members.iter().enumerate() {
                if newest.duration_since(*t) <= d {
                    reasons[i].push(format!("within {d:#}"));
                }
            }
        }
        let mut bucket_rule =
            |period: Period, limit: Option<usize>, range: Option<SignedDuration>, label: String| {
                let mut last_key = None;
                let mut left = limit.unwrap_or(usize::MAX);
                for (i, (_, t, _)) in members.iter().enumerate() {
                    if left == 0 {
                        break;
                    }
                    if let Some(d) = range {
                        if newest.duration_since(*t) > d {
                            break;
                        }
                    }
                    let key = period.key(*t, tz);
                    if last_key != Some(key) {
                        last_key = Some(key);
                        reasons[i].push(label.clone());
                        left -= 1;
                    }
                }
            };
        for (p, n) in &policy.periods {
            bucket_rule(*p, Some(*n), None, p.name().to_string());
        }
        for (p, d) in &policy.within_periods {
            bucket_rule(*p, None, Some(*d), format!("{} within {d:#}", p.name()));
        }
        for (i, (id, _, _)) in members.iter().enumerate() {
            out.push(Decision {
                id: *id,
                group: group.clone(),
                reasons: std::mem::take(&mut reasons[i]),
            });
        }
    }
    Ok(out)
}

/// The ids a set of decisions removes.
pub fn removed(decisions: &[Decision]) -> HashSet<Id> {
    decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id)
        .collect()
}

/// Parses durations like `7d`, `2w`, `1y6mo`, `36h`, `90m`: `y` years (365 days), `mo`
/// months (30 days), `w` weeks, `d` days, `h` hours, `m` minutes, `s` seconds.
pub fn parse_duration(s: &str) -> Option<SignedDuration> {
    let mut total = 0i64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'y' => 365 * 86_400,
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            's' => 1,
            'm' if chars.peek() == Some(&'o') => {
                chars.next();
                30 * 86_400
            }
            'm' => 60,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(SignedDuration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Some(SignedDuration::from_hours(168)));
        assert_eq!(
            parse_duration("1y2mo"),
            Some(SignedDuration::from_secs((365 + 60) * 86_400))
        );
        assert_eq!(parse_duration("90m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
