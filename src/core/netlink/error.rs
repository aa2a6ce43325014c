//! Errors of the address manager: one variant per failed action, naming the interface and
//! the address, with the kernel's errno where there is one.

use std::{fmt, io, net::IpAddr};

/// What the kernel (or the netlink connection) answered to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// The kernel refused with this errno (positive, e.g. 95 for `EOPNOTSUPP`).
    Errno(i32),
    /// The netlink connection task has stopped; the manager must be recreated.
    ConnectionClosed,
    /// A reply that could not be understood.
    Protocol(String),
}

impl KernelError {
    /// The errno, when the kernel refused the request.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Errno(code) => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// The symbolic name of the errnos address management meets.
fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENOBUFS => "ENOBUFS",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        _ => return None,
    })
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno(code) => {
                let text = io::Error::from_raw_os_error(*code);
                match errno_name(*code) {
                    Some(name) => write!(f, "{name}: {text}"),
                    None => write!(f, "{text}"),
                }
            }
            Self::ConnectionClosed => f.write_str("the netlink connection is closed"),
            Self::Protocol(text) => write!(f, "unexpected netlink reply: {text}"),
        }
    }
}

impl From<rtnetlink::Error> for KernelError {
    fn from(error: rtnetlink::Error) -> Self {
        match error {
            rtnetlink::Error::NetlinkError(message) => Self::from_code(message.raw_code()),
            rtnetlink::Error::RequestFailed => Self::ConnectionClosed,
            other => Self::Protocol(other.to_string()),
        }
    }
}

impl KernelError {
    /// From a netlink error code (negative errno, as the kernel sends it).
    pub(crate) fn from_code(code: i32) -> Self {
        Self::Errno(code.saturating_abs())
    }
}

/// A failed address-manager action.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// No Tokio runtime to run the netlink connection on.
    #[error("the address manager needs a Tokio runtime with IO enabled: create it inside one")]
    NoRuntime,
    /// The netlink route socket could not be opened.
    #[error("cannot open a netlink route socket: {0}")]
    Connect(#[source] io::Error),
    /// A dump (links, addresses or routes) failed.
    #[error("cannot list {what}: {kernel}")]
    List {
        /// `links`, `addresses` or `routes`.
        what: &'static str,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// A link looked up by name or index does not exist.
    #[error("interface {link} does not exist")]
    LinkNotFound {
        /// The name or index asked for.
        link: String,
    },
    /// A link name the kernel would refuse.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidLinkName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The link was absent and could not be created.
    #[error("interface {name} does not exist and cannot be created as a dummy link: {kernel}{hint}")]
    CreateLink {
        /// The link name.
        name: String,
        /// The kernel's answer.
        kernel: KernelError,
        /// What the administrator can do (empty when there is nothing specific to say).
        hint: String,
    },
    /// The link exists but could not be set up.
    #[error("cannot bring interface {name} up: {kernel}")]
    SetLinkUp {
        /// The link name.
        name: String,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// The alias that marks a link as created by PureLB could not be set.
    #[error("cannot mark interface {name} as created by PureLB (alias): {kernel}")]
    MarkLink {
        /// The link name.
        name: String,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// A link PureLB did not create is never deleted.
    #[error(
        "interface {name} was not created by PureLB (its alias is not PureLB's mark), so PureLB does not delete it"
    )]
    LinkNotCreated {
        /// The link name.
        name: String,
    },
    /// Deleting a link failed.
    #[error("cannot delete interface {name}: {kernel}")]
    DeleteLink {
        /// The link name.
        name: String,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// An address the kernel would refuse.
    #[error("invalid address {ip}/{prefix_len}: {reason}")]
    InvalidAddress {
        /// The address.
        ip: IpAddr,
        /// The prefix length asked for.
        prefix_len: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Adding (or replacing) an address failed.
    #[error("cannot add {ip}/{prefix_len} to {link}: {kernel}")]
    AddAddress {
        /// The interface.
        link: String,
        /// The address.
        ip: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// The address is there but PureLB did not add it: it is never replaced or deleted.
    #[error(
        "{ip} on {link} was not added by PureLB (it has no PureLB ownership mark), so PureLB \
         leaves it alone; remove it by hand if PureLB should manage this address"
    )]
    NotOwned {
        /// The interface.
        link: String,
        /// The address.
        ip: IpAddr,
    },
    /// Deleting an address failed.
    #[error("cannot delete {ip} from {link}: {kernel}")]
    DeleteAddress {
        /// The interface.
        link: String,
        /// The address.
        ip: IpAddr,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// Deleting a primary address would have deleted the subnet's secondaries, and
    /// `promote_secondaries` could not be turned on; nothing was deleted.
    #[error(
        "not deleting {ip} from {link}: it is the primary address of its subnet and deleting it \
         would also delete {secondaries:?}; enabling net.ipv4.conf.{link}.promote_secondaries \
         failed: {kernel}; set that sysctl to 1"
    )]
    PromoteSecondaries {
        /// The interface.
        link: String,
        /// The primary address.
        ip: IpAddr,
        /// The secondaries that would have been lost.
        secondaries: Vec<IpAddr>,
        /// The kernel's answer.
        kernel: KernelError,
    },
    /// The notification socket could not be opened or subscribed.
    #[error("cannot {action} the blackhole route for {ip}: {kernel}")]
    Route { action: &'static str, ip: IpAddr, kernel: KernelError },
    #[error("cannot subscribe to address and link notifications: {0}")]
    Subscribe(#[source] io::Error),
    /// The notification stream ended (its connection stopped).
    #[error("the address notification stream has closed")]
    WatchClosed,
}

impl NetlinkError {
    /// The kernel's errno behind the failure, if the kernel refused something.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::List { kernel, .. }
            | Self::CreateLink { kernel, .. }
            | Self::SetLinkUp { kernel, .. }
            | Self::MarkLink { kernel, .. }
            | Self::DeleteLink { kernel, .. }
            | Self::AddAddress { kernel, .. }
            | Self::DeleteAddress { kernel, .. }
            | Self::Route { kernel, .. }
            | Self::PromoteSecondaries { kernel, .. } => kernel.errno(),
            Self::Connect(e) | Self::Subscribe(e) => e.raw_os_error(),
            Self::NoRuntime
            | Self::LinkNotFound { .. }
            | Self::InvalidLinkName { .. }
            | Self::InvalidAddress { .. }
            | Self::NotOwned { .. }
            | Self::LinkNotCreated { .. }
            | Self::WatchClosed => None,
        }
    }

    /// The error for a failed dummy-link creation, with advice when the kernel has no dummy
    /// link type.
    pub(crate) fn create_link(name: &str, kernel: KernelError) -> Self {
        let hint = if kernel.is(libc::EOPNOTSUPP) {
            format!(
                "; this kernel has no dummy link type: create {name} beforehand as a link of any \
                 kind (for example `ip link add {name} type bridge`) or load the dummy module \
                 (`modprobe dummy`)"
            )
        } else {
            String::new()
        };
        Self::CreateLink { name: name.to_owned(), kernel, hint }
    }
}
