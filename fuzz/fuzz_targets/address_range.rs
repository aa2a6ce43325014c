//! The address-range parser (`AddressPool.pool`, `subnet`, `aggregation`): never panics, and
//! what it accepts is consistent (first ≤ last, size matches the ends, the printed form parses
//! back to the same range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use purelb::core::ipam::{AddressRange, Family, Subnet, ip_value, parse_aggregation};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(range) = AddressRange::parse(text) {
        let (lo, hi) = range.bounds();
        assert!(lo <= hi, "{text:?}: first after last");
        assert_eq!(ip_value(range.first()), lo);
        assert_eq!(ip_value(range.last()), hi);
        // An exact count: 2^128 (all of IPv6) does not fit a u128 and reads as None.
        assert_eq!(range.size().to_u128(), (hi - lo).checked_add(1), "{text:?}: size");
        assert!(range.contains(range.first()) && range.contains(range.last()));
        let again = AddressRange::parse(&range.to_string()).expect("a printed range parses");
        assert_eq!(again, range, "{text:?} printed as {range} parses differently");
    }
    if let Ok(subnet) = Subnet::parse(text) {
        assert!(subnet.prefix_len() <= subnet.family().bits());
        assert!(subnet.contains(subnet.network()));
        let again = Subnet::parse(&subnet.to_string()).expect("a printed subnet parses");
        assert_eq!(again, subnet);
    }
    for (family, len) in [(Family::V4, 32), (Family::V6, 128)] {
        if let Ok(agg) = parse_aggregation("aggregation", Some(text), family, len) {
            assert!(agg <= family.bits());
        }
    }
});
