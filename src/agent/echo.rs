//! The kernel's echoes of the agent's own address changes. Every add and removal comes back
//! through the address watch as a notification; a pass for it would find what the pass that
//! made it already planned, so a trigger made only of such echoes causes no pass (at 5,000
//! Services a pass is the cost of a change: docs/scale.md). Anything else in a trigger (an
//! address added or removed by someone else, a link change, a lost notification, a later
//! notification of the same address such as the end of IPv6 duplicate address detection)
//! still causes one.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::core::netlink::WatchTrigger;

/// How long an expected echo waits for its notification. The kernel sends it at once; one
/// that never came (the change failed after all) must not hide a later change by someone else.
pub const ECHO_WINDOW: Duration = Duration::from_secs(2);

/// One change the agent makes: an address added (or replaced) or removed at a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    /// Added or replaced (`true`), removed (`false`).
    pub added: bool,
    /// The interface's index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The echoes still to come.
#[derive(Debug, Default)]
pub struct Echoes {
    expected: Vec<(Echo, Instant)>,
}

impl Echoes {
    /// Expects the echo of a change about to be made.
    pub fn expect(&mut self, echo: Echo, now: Instant) {
        self.expected.push((echo, now));
    }

    /// The change was not made after all: no echo comes.
    pub fn forget(&mut self, echo: Echo) {
        if let Some(i) = self.expected.iter().rposition(|(e, _)| *e == echo) {
            self.expected.remove(i);
        }
    }

    /// Whether `trigger` is nothing but echoes of the agent's own changes (each expected echo
    /// answers one notification, and is used up by it).
    pub fn only_echoes(&mut self, trigger: &WatchTrigger, now: Instant) -> bool {
        self.expected.retain(|(_, at)| now.saturating_duration_since(*at) <= ECHO_WINDOW);
        let mut only = !trigger.overrun && trigger.other == 0 && !trigger.addresses.is_empty();
        for (added, address) in &trigger.addresses {
            let echo = Echo { added: *added, index: address.index, ip: address.ip, prefix_len: address.prefix_len };
            match self.expected.iter().position(|(e, _)| *e == echo) {
                Some(i) => {
                    self.expected.remove(i);
                }
                None => only = false,
            }
        }
        only
    }

    /// Echoes still expected.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.expected.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::netlink::Address;

    fn address(index: u32, ip: &str, prefix_len: u8) -> Address {
        Address::plain(index, "", ip, prefix_len)
    }

    fn echo(added: bool, index: u32, ip: &str, prefix_len: u8) -> Echo {
        Echo { added, index, ip: ip.parse().unwrap(), prefix_len }
    }

    fn trigger(changes: &[(bool, Address)]) -> WatchTrigger {
        WatchTrigger { notifications: changes.len(), addresses: changes.to_vec(), ..WatchTrigger::default() }
    }

    #[test]
    fn own_changes_are_echoes_and_each_answers_one_notification() {
        let now = Instant::now();
        let mut echoes = Echoes::default();
        echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
        echoes.expect(echo(false, 3, "198.51.100.16", 32), now);
        let t = trigger(&[(true, address(2, "192.0.2.240", 24)), (false, address(3, "198.51.100.16", 32))]);
        assert!(echoes.only_echoes(&t, now));
        assert_eq!(echoes.pending(), 0);
        // The same notifications again are someone else's.
        assert!(!echoes.only_echoes(&t, now));
    }

    #[test]
    fn anything_else_in_a_trigger_causes_a_pass() {
        let now = Instant::now();
        let own = (true, address(2, "192.0.2.240", 24));
        let cases: [(&str, WatchTrigger); 6] = [
            ("removed instead of added", trigger(&[(false, address(2, "192.0.2.240", 24))])),
            ("another interface", trigger(&[(true, address(3, "192.0.2.240", 24))])),
            ("another prefix", trigger(&[(true, address(2, "192.0.2.240", 32))])),
            ("another address beside the echo", trigger(&[own.clone(), (true, address(2, "192.0.2.241", 24))])),
            ("a link change beside the echo", WatchTrigger { other: 1, ..trigger(std::slice::from_ref(&own)) }),
            ("an overrun", WatchTrigger { overrun: true, ..trigger(std::slice::from_ref(&own)) }),
        ];
        for (what, t) in cases {
            let mut echoes = Echoes::default();
            echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
            assert!(!echoes.only_echoes(&t, now), "{what}");
        }
        // A second notification of the same address (the end of DAD) after its echo.
        let mut echoes = Echoes::default();
        echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
        assert!(echoes.only_echoes(&trigger(std::slice::from_ref(&own)), now));
        assert!(!echoes.only_echoes(&trigger(&[own]), now));
        // An empty trigger is not an echo.
        assert!(!Echoes::default().only_echoes(&WatchTrigger::default(), now));
    }

    #[test]
    fn an_echo_that_never_came_or_was_forgotten_hides_nothing_later() {
        let now = Instant::now();
        let t = trigger(&[(true, address(2, "192.0.2.240", 24))]);
        let mut echoes = Echoes::default();
        echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
        assert!(!echoes.only_echoes(&t, now + ECHO_WINDOW + Duration::from_millis(1)));
        echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
        echoes.forget(echo(true, 2, "192.0.2.240", 24));
        assert!(!echoes.only_echoes(&t, now));
        assert!(echoes.pending() == 0);
        // Within the window it is an echo.
        echoes.expect(echo(true, 2, "192.0.2.240", 24), now);
        assert!(echoes.only_echoes(&t, now + ECHO_WINDOW));
    }
}
