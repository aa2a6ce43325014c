//! [`AddressWatch`]: address and link notifications as debounced "re-read now" triggers.

use std::time::Duration;

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket, SocketAddr},
};
use tokio::{task::JoinHandle, time::Instant};
use tracing::{trace, warn};

use super::{Address, NetlinkError, model::address_from_message};

/// How notifications are turned into triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// A trigger fires once no notification came for this long...
    pub debounce: Duration,
    /// ...or this long after the first notification, whichever is first.
    pub max_delay: Duration,
    /// Receive buffer of the notification socket in bytes (the kernel caps it at
    /// `net.core.rmem_max`); when it fills up, the next trigger reports an overrun.
    pub receive_buffer: usize,
}

impl Default for WatchConfig {
    /// 50 ms quiet time, at most 500 ms delay, 4 MiB buffer.
    fn default() -> Self {
        Self { debounce: Duration::from_millis(50), max_delay: Duration::from_millis(500), receive_buffer: 4 << 20 }
    }
}

/// One trigger: something changed, re-read the whole snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchTrigger {
    /// Address and link notifications folded into this trigger.
    pub notifications: usize,
    /// The socket overran (`ENOBUFS`): notifications were lost. The answer is the same full
    /// re-read; this only says that the count is not the whole story.
    pub overrun: bool,
    /// The address notifications, in order: added (or changed) `true`, removed `false`, and
    /// the address as the notification describes it (its interface by index; no name).
    pub addresses: Vec<(bool, Address)>,
    /// Link notifications, and address notifications without an address.
    pub other: usize,
}

impl WatchTrigger {
    /// Counts a message; whether it is a trigger at all.
    fn absorb(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
        match &message.payload {
            NetlinkPayload::InnerMessage(
                m @ (RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a)),
            ) => {
                self.notifications += 1;
                match address_from_message(a, "") {
                    Some(address) => {
                        self.addresses.push((matches!(m, RouteNetlinkMessage::NewAddress(_)), address));
                    }
                    None => self.other += 1,
                }
                true
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_)) => {
                self.notifications += 1;
                self.other += 1;
                true
            }
            NetlinkPayload::Overrun(_) => {
                warn!("netlink notification socket overran; re-reading every address");
                self.overrun = true;
                true
            }
            other => {
                trace!(?other, "ignoring netlink notification");
                false
            }
        }
    }
}

/// A subscription to address and link notifications (`Ipv4Ifaddr`, `Ipv6Ifaddr`, `Link`) on
/// its own multicast socket, whose connection runs as a task until the watch is dropped.
///
/// Level-triggered use: subscribe, read the snapshot and act on it, then loop on
/// [`AddressWatch::changed`] and read the snapshot again each time. Own changes echo back as
/// triggers too, which a level-triggered reader tolerates.
#[derive(Debug)]
pub struct AddressWatch {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: JoinHandle<()>,
    config: WatchConfig,
}

impl Drop for AddressWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl AddressWatch {
    /// Opens the notification socket and spawns its connection on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::NoRuntime`] outside a Tokio runtime, [`NetlinkError::Subscribe`] when
    /// the socket cannot be opened, bound or sized.
    pub fn subscribe(config: WatchConfig) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (mut connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Link,
        ])
        .map_err(NetlinkError::Subscribe)?;
        if config.receive_buffer > 0 {
            let size = libc::c_int::try_from(config.receive_buffer).unwrap_or(libc::c_int::MAX);
            connection.socket_mut().socket_mut().set_rx_buf_sz(size).map_err(NetlinkError::Subscribe)?;
        }
        let connection = runtime.spawn(connection);
        Ok(Self { messages, connection, config })
    }

    /// Waits for the next change: the first address or link notification (or overrun), then
    /// until notifications stop for [`WatchConfig::debounce`] (at most
    /// [`WatchConfig::max_delay`]). Re-read the snapshot after it returns.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::WatchClosed`] when the notification connection has stopped.
    pub async fn changed(&mut self) -> Result<WatchTrigger, NetlinkError> {
        let mut trigger = WatchTrigger::default();
        loop {
            let Some((message, _)) = self.messages.next().await else {
                return Err(NetlinkError::WatchClosed);
            };
            if trigger.absorb(&message) {
                break;
            }
        }
        let deadline = Instant::now() + self.config.max_delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(self.config.debounce.min(left), self.messages.next()).await {
                // Quiet for the debounce time, or closed (the next call reports it).
                Err(_) | Ok(None) => break,
                Ok(Some((message, _))) => {
                    trigger.absorb(&message);
                }
            }
        }
        Ok(trigger)
    }
}
