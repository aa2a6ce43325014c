//! Which addresses of one range are in use, as coalesced runs of used addresses in a
//! `BTreeMap`: taking the lowest free address, taking or releasing a given one and answering
//! "is it full" are O(log r) for r runs (O(1) for "full"), whatever the range size, so a /64
//! works as well as a /28, with exact counts.

use std::{collections::BTreeMap, net::IpAddr};

use super::{AddressCount, AddressRange, Family, ip_value};

/// Why an address could not be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The address is not in this range.
    #[error("{0} is not in the range")]
    OutsideRange(IpAddr),
    /// The address is already in use.
    #[error("{0} is already in use")]
    InUse(IpAddr),
}

/// Used addresses of one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeUsage {
    range: AddressRange,
    /// start → end (inclusive) of each run of used addresses; runs never touch or overlap.
    runs: BTreeMap<u128, u128>,
    used: u128,
}

impl RangeUsage {
    /// Nothing in use.
    #[must_use]
    pub fn new(range: AddressRange) -> Self {
        Self { range, runs: BTreeMap::new(), used: 0 }
    }

    /// The range.
    #[must_use]
    pub fn range(&self) -> &AddressRange {
        &self.range
    }

    /// Addresses in use.
    #[must_use]
    pub fn in_use(&self) -> AddressCount {
        AddressCount::new(self.used)
    }

    /// Addresses still free (exact).
    #[must_use]
    pub fn available(&self) -> AddressCount {
        self.range.size().saturating_sub(self.in_use())
    }

    /// Whether every address is in use. O(1).
    #[must_use]
    pub fn is_full(&self) -> bool {
        let (first, last) = self.range.bounds();
        self.runs.len() == 1 && self.runs.first_key_value() == Some((&first, &last))
    }

    fn value(&self, ip: IpAddr) -> Option<u128> {
        self.range.contains(ip).then(|| ip_value(ip))
    }

    fn run_containing(&self, v: u128) -> Option<(u128, u128)> {
        self.runs.range(..=v).next_back().filter(|(_, end)| **end >= v).map(|(s, e)| (*s, *e))
    }

    /// Whether `ip` is in use.
    #[must_use]
    pub fn is_used(&self, ip: IpAddr) -> bool {
        self.value(ip).is_some_and(|v| self.run_containing(v).is_some())
    }

    /// The lowest free address, if any. O(log r).
    #[must_use]
    pub fn lowest_free(&self) -> Option<IpAddr> {
        let (first, last) = self.range.bounds();
        let v = match self.runs.first_key_value() {
            Some((start, end)) if *start == first => {
                if *end >= last {
                    return None;
                }
                end + 1
            }
            _ => first,
        };
        Some(to_ip(self.range.family(), v))
    }

    /// Marks `ip` used.
    ///
    /// # Errors
    ///
    /// The address is outside the range or already used.
    pub fn take(&mut self, ip: IpAddr) -> Result<(), TakeError> {
        let v = self.value(ip).ok_or(TakeError::OutsideRange(ip))?;
        if self.run_containing(v).is_some() {
            return Err(TakeError::InUse(ip));
        }
        let mut start = v;
        let mut end = v;
        if let Some(prev) = v.checked_sub(1).and_then(|p| self.run_containing(p)) {
            start = prev.0;
        }
        if let Some(next_end) = v.checked_add(1).and_then(|n| self.runs.remove(&n)) {
            end = next_end;
        }
        self.runs.insert(start, end);
        self.used += 1;
        Ok(())
    }

    /// Takes the lowest free address.
    pub fn take_lowest(&mut self) -> Option<IpAddr> {
        let ip = self.lowest_free()?;
        self.take(ip).ok().map(|()| ip)
    }

    /// Marks `ip` free again; returns whether it was in use.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        let Some(v) = self.value(ip) else { return false };
        let Some((start, end)) = self.run_containing(v) else { return false };
        self.runs.remove(&start);
        if start < v {
            self.runs.insert(start, v - 1);
        }
        if v < end {
            self.runs.insert(v + 1, end);
        }
        self.used -= 1;
        true
    }

    /// Number of runs (for tests and benchmarks).
    #[must_use]
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

fn to_ip(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(u32::try_from(v).unwrap_or(u32::MAX).into()),
        Family::V6 => IpAddr::V6(v.into()),
    }
}

/// The allocation strategy of the Go PureLB, kept as a reference for tests and benchmarks:
/// walk from the first address and test each one against the set of used addresses.
#[doc(hidden)]
#[must_use]
pub fn lowest_free_by_scan(range: &AddressRange, used: &std::collections::HashSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = range.bounds();
    let mut v = first;
    loop {
        let ip = to_ip(range.family(), v);
        if !used.contains(&ip) {
            return Some(ip);
        }
        if v == last {
            return None;
        }
        v += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn r(text: &str) -> AddressRange {
        AddressRange::parse(text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn takes_lowest_first_and_fills_holes() {
        let mut u = RangeUsage::new(r("192.0.2.240/30"));
        assert_eq!(u.take_lowest(), Some(ip("192.0.2.240")));
        assert_eq!(u.take_lowest(), Some(ip("192.0.2.241")));
        u.take(ip("192.0.2.243")).unwrap();
        assert_eq!(u.take(ip("192.0.2.243")), Err(TakeError::InUse(ip("192.0.2.243"))));
        assert_eq!(u.take(ip("192.0.2.1")), Err(TakeError::OutsideRange(ip("192.0.2.1"))));
        assert_eq!(u.lowest_free(), Some(ip("192.0.2.242")));
        assert_eq!(u.take_lowest(), Some(ip("192.0.2.242")));
        assert!(u.is_full());
        assert_eq!(u.run_count(), 1, "runs coalesce");
        assert_eq!(u.take_lowest(), None);
        assert!(u.release(ip("192.0.2.241")));
        assert!(!u.release(ip("192.0.2.241")));
        assert!(!u.is_full());
        assert_eq!(u.run_count(), 2);
        assert_eq!(u.lowest_free(), Some(ip("192.0.2.241")));
        assert_eq!(u.in_use(), AddressCount::new(3));
        assert_eq!(u.available(), AddressCount::new(1));
    }

    /// Releasing the first or the last address of a run shortens it and leaves no empty run
    /// behind (mutation testing: `<` → `<=` twice in `release` kept an inverted run unnoticed).
    #[test]
    fn releasing_an_end_of_a_run_shortens_it() {
        let mut u = RangeUsage::new(r("192.0.2.0/28"));
        for last in 1..=4 {
            u.take(ip(&format!("192.0.2.{last}"))).unwrap();
        }
        assert_eq!(u.run_count(), 1);
        assert!(u.release(ip("192.0.2.1")));
        assert_eq!(u.run_count(), 1, "{:?}", u.runs);
        assert!(u.release(ip("192.0.2.4")));
        assert_eq!(u.run_count(), 1, "{:?}", u.runs);
        let used: Vec<bool> = (0..6).map(|last| u.is_used(ip(&format!("192.0.2.{last}")))).collect();
        assert_eq!(used, [false, false, true, true, false, false]);
        assert_eq!(u.take_lowest(), Some(ip("192.0.2.0")));
    }

    #[test]
    fn huge_ipv6_ranges_are_exact() {
        let mut u = RangeUsage::new(r("2001:db8::/64"));
        for _ in 0..1000 {
            u.take_lowest().unwrap();
        }
        assert_eq!(u.available().to_string(), (u128::from(u64::MAX) + 1 - 1000).to_string());
        u.take(ip("2001:db8::ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(u.run_count(), 2);
        assert_eq!(u.lowest_free(), Some(ip("2001:db8::3e8")));
    }

    proptest! {
        #[test]
        fn agrees_with_the_linear_scan(ops in proptest::collection::vec((any::<bool>(), 0_u8..64), 0..200)) {
            let range = r("192.0.2.0/26");
            let mut u = RangeUsage::new(range);
            let mut used = HashSet::new();
            for (take, offset) in ops {
                let addr = range.nth(u128::from(offset)).unwrap();
                if take {
                    prop_assert_eq!(u.take(addr).is_ok(), used.insert(addr));
                } else {
                    prop_assert_eq!(u.release(addr), used.remove(&addr));
                }
                prop_assert_eq!(u.lowest_free(), lowest_free_by_scan(&range, &used));
                prop_assert_eq!(u.in_use(), AddressCount::new(used.len() as u128));
                prop_assert_eq!(u.is_full(), used.len() == 64);
                prop_assert_eq!(u.is_used(addr), used.contains(&addr));
            }
        }
    }
}
