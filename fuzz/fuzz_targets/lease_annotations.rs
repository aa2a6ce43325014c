//! The node Lease annotations other agents write (`purelb.io/subnets`,
//! `purelb.io/announcing`): never panic, bounded, and what is parsed prints back to a value
//! that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use purelb::core::election::{MAX_SUBNETS, format_subnets, parse_announcing, parse_subnets};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let subnets = parse_subnets(text);
    assert!(subnets.len() <= MAX_SUBNETS);
    let printed = format_subnets(&subnets);
    let mut again = parse_subnets(&printed);
    let mut sorted = subnets.clone();
    again.sort_by_key(ToString::to_string);
    sorted.sort_by_key(ToString::to_string);
    assert_eq!(again, sorted, "{text:?} → {printed:?}");

    let held = parse_announcing(text);
    for (i, h) in held.iter().enumerate() {
        assert!(held[..i].iter().all(|o| o.address != h.address), "repeated address in {text:?}");
    }
});
